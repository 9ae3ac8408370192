"""The typed shape of params.yaml: one pydantic model per section the code reads, checked once at load.

Unknown keys are refused (a typo is an error, not a silent default), types are strict (no 2.7 -> 2, no
"false" -> True; an integer is accepted where a number is expected) and ranges are checked. Each error is
one `ParamsError` line naming the dotted key and what was expected. params.yaml may omit any key: the
fields below carry the defaults (the readers' fallbacks are the same values, held equal by
tests/code/test_params.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from fashionrec.core.errors import FashionrecError, ParamsError

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
OnBadFile = Literal["fail", "quarantine"]
Device = Literal["auto", "cpu", "cuda"]
IndexKind = Literal["balltree", "brute", "hnsw", "auto"]
DeployIndexKind = Literal["balltree", "brute", "hnsw", "auto", "milvus"]   # milvus: the deploy step only
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Section(BaseModel):
    """A params mapping: unknown keys refused, strict types, read-only once checked."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


S = TypeVar("S", bound=BaseModel)


# --- data stages -------------------------------------------------------------------------------------


class MlflowSection(Section):
    tracking_uri: str | None = "sqlite:///mlflow/mlflow.db"   # MLFLOW_TRACKING_URI overrides
    artifact_root: str | None = "mlflow/artifacts"
    experiment: str = "fashionrec"


class IngestSection(Section):
    source: str = "auto"
    shared_path: str | None = "../shared/datasets/clothing-dataset"
    download_url: str | None = "https://github.com/alexeygrigorev/clothing-dataset/archive/refs/heads/master.zip"
    download_dir: str = "data/raw"
    additions: str | None = "data/additions"
    out: str = "data/manifest"
    chunk_size: PosInt = 10000        # manifest rows per Parquet batch (memory bounded by it, not by N)


class IntakeSection(Section):
    subset: str = "data/subset"
    reports: str = "reports/intake"
    on_bad_file: OnBadFile | None = None
    record: bool = True
    repro: str = "subset"
    push: bool = True
    commit: bool = True
    message: str = "data: add {n} photos from {folder}"


class SplitSection(Section):
    policy: Literal["published", "grouped"] = "published"
    published_file: str = "top10-splits.csv"
    shares: dict[str, Share] | None = None
    keep_in_test: str | None = None
    pinned_file: str | None = None


class SubsetKeys(Section):
    """The keys one subset may set, shared (`subset.*`) or its own (`subset.subsets.<name>.*`)."""

    manifest: str | None = None
    out: str | None = None
    drop_labels: list[str] | None = None
    attributes: list[str] | None = None
    classes: list[str] | None = None
    min_per_class: PosInt | None = None
    max_per_class: PosInt | None = None
    seed: int | None = None
    split: SplitSection | None = None
    label_review: str | None = None   # reviewed list of label fixes (CSV) applied to the train split


class SubsetSection(SubsetKeys):
    manifest: str = "data/manifest/manifest.parquet"
    out: str = "data/subset"
    product: str = "catalog"
    shard_size: PosInt = 1000         # photos per tar shard (WebDataset layout)
    subsets: dict[str, SubsetKeys | None] = Field(default_factory=dict)


class ValidateKeys(Section):
    min_width: PosInt | None = None
    min_height: PosInt | None = None
    min_per_class: PosInt | None = None
    split_tolerance: Share | None = None
    on_bad_file: OnBadFile | None = None


class ValidateSection(Section):
    subset: str = "data/subset"
    out: str = "data/validated"
    reports: str = "reports/validate"
    on_bad_file: OnBadFile = "quarantine"
    min_width: PosInt = 1
    min_height: PosInt = 1
    min_per_class: PosInt = 1
    split_tolerance: Share = 0.05
    chunk_size: PosInt = 10000        # manifest rows per Great Expectations batch
    subsets: dict[str, ValidateKeys | None] = Field(default_factory=dict)


class SynthSection(Section):
    size: Annotated[int, Field(ge=8)] = 64   # side of each synthetic photo, in pixels
    per_sender: PosInt = 20           # consecutive photos sharing a sender
    kids_every: PosInt = 10           # every n-th photo is a kids' photo
    test_every: PosInt = 7            # senders whose id is a multiple of this form the published test split
    seed: int = 0
    jobs: PosInt = 1                  # worker processes, each a contiguous id range (same output for any)


class DescribeSection(Section):
    validated: str = "data/validated"
    out: str = "reports/describe"
    samples_per_class: PosInt = 8
    thumb_size: PosInt = 112
    seed: int = 42


# --- select, export, register, evaluate --------------------------------------------------------------


class SelectSection(Section):
    metrics_dir: str = "metrics"
    out: str = "reports/select/decision.json"
    primary_metric: str | None = None
    thresholds: dict[str, float] | None = None
    max_regression: NonNegFloat = 0.0
    min_improvement: NonNegFloat = 0.0
    groups: list[str] = Field(default_factory=list)
    group_floors: dict[str, float] = Field(default_factory=dict)


class ParitySection(Section):
    queries: PosInt = 32
    inventory: PosInt = 96
    atol: NonNegFloat = 1e-4
    top_k: PosInt = 5
    tie_tolerance: NonNegFloat = 1e-5
    batch_size: PosInt = 32
    seed: int = 0


class QuantizeSection(Section):
    enabled: bool = False
    format: Literal["qdq", "qoperator"] = "qdq"
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["uint8", "int8"] = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration: Literal["minmax", "percentile", "entropy"] = "percentile"
    percentile: Annotated[float, Field(gt=0, le=100)] = 99.999
    nodes_to_exclude: list[str] = Field(default_factory=list)
    fp32_front: Share = 0.25
    calibration_images: PosInt = 64
    eval_images: PosInt = 200
    batch_size: PosInt = 16
    max_accuracy_drop: Share = 0.02
    min_neighbour_overlap: Share = 0.8


class ExportSection(Section):
    decision: str = "reports/select/decision.json"
    models_dir: str = "models"
    manifest: str = "data/validated/catalog/manifest.parquet"
    out: str = "models/export"
    opset: PosInt = 17
    providers: list[str] = Field(default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    parity: ParitySection = Field(default_factory=ParitySection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)


class RegisterSection(Section):
    name: str = "fashionrec"
    export_dir: str = "models/export"
    decision: str = "reports/select/decision.json"
    models_dir: str = "models"
    out: str = "models/registered.json"
    promotion: Literal["auto", "manual"] = "manual"
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    pip_requirements: list[str] = Field(default_factory=lambda: ["onnxruntime-gpu"])


class BallTreeParams(Section):
    leaf_size: PosInt = 40
    dims: PosInt | None = 64                 # null: the full embeddings


class BruteParams(Section):
    block_size: PosInt = 1024


class HnswParams(Section):
    M: PosInt = 16
    ef_construction: PosInt = 200
    ef_search: PosInt = 128
    seed: int = 42
    build_threads: NonNegInt = 0


# Index types each Milvus backend really builds. milvus-lite accepts any name at create_index and then
# searches by a scan where it cannot build it (../shared/NOTES.md "Milvus"), so a deploy refuses the rest.
MILVUS_LITE_TYPES = ["FLAT", "AUTOINDEX", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8"]
MILVUS_SERVER_TYPES = [*MILVUS_LITE_TYPES, "IVF_PQ", "SCANN", "DISKANN", "HNSW_PQ", "HNSW_PRQ", "IVF_RABITQ",
                       "GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE"]
IndexValue = int | float | str


class MilvusBulkImport(Section):
    """`index.milvus.bulk_import`: the server's object storage (MinIO/S3) the import files go to."""

    url: str | None = None                    # the server's REST address (null: index.milvus.uri)
    endpoint: str | None = None               # e.g. http://milvus-minio:9000; null: AWS S3 of `region`;
                                              # file:///DIR: a folder the server reads (storageType local)
    bucket: str | None = None                 # the Milvus server's bucket (its minio.bucketName)
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")] = \
        "fashionrec-import"                   # object keys: no "..", no leading or doubled "/"
    region: str | None = None
    access_key_env: str = "FASHIONREC_MILVUS_S3_ACCESS_KEY"
    secret_key_env: str = "FASHIONREC_MILVUS_S3_SECRET_KEY"
    rows_per_file: PosInt = 100_000


class MilvusParams(Section):
    """`index.milvus`: the inventory in a Milvus collection per bundle (the token: from `token_env`)."""

    uri: str | None = None
    token_env: str = "FASHIONREC_MILVUS_TOKEN"
    db_name: str = ""
    backend: Literal["lite", "server"] = "lite"
    alias: str = "items_serving"
    collection_prefix: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,100}$")] = "fashionrec"
    index_type: str = "HNSW"
    index_params: dict[str, IndexValue] = Field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, IndexValue] = Field(default_factory=lambda: {"ef": 128})
    allowed_index_types: dict[Literal["lite", "server"], list[str]] = Field(
        default_factory=lambda: {"lite": list(MILVUS_LITE_TYPES), "server": list(MILVUS_SERVER_TYPES)})
    timeout_s: PosFloat = 10.0
    build_timeout_s: PosFloat = 600.0
    insert_batch: PosInt = 1000
    exact_filter_max: NonNegInt = 2000
    load: Literal["auto", "insert", "bulk_import"] = "auto"
    bulk_import: MilvusBulkImport = Field(default_factory=MilvusBulkImport)


class EvaluateIndex(Section):
    kind: IndexKind = "balltree"
    auto_exact_max: PosInt = 5000
    balltree: BallTreeParams | None = None
    brute: BruteParams | None = None
    hnsw: HnswParams | None = None


class InstanceSection(Section):
    n_queries: PosInt = 300
    crop_scale: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.6, 1.0]
    crop_ratio: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.75, 1.333]
    flip: Share = 0.5
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.2
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.2
    saturation: Annotated[float, Field(ge=0, lt=1)] = 0.2
    jpeg_quality: Annotated[list[Annotated[int, Field(ge=1, le=100)]],
                            Field(min_length=2, max_length=2)] = [50, 90]


class GridSection(Section):
    n_queries: PosInt = 8
    thumb: PosInt = 128


class EvaluateSection(Section):
    models_dir: str = "models"
    data: str = "data/validated/catalog"
    benchmark: str | None = None
    metrics_dir: str = "metrics"
    reports: str = "reports/evaluate"
    backend: Literal["auto", "onnx", "torch"] = "auto"
    device: Device = "cpu"
    batch_size: PosInt = 32
    flip_tta: bool = False
    seed: int = 42
    latency_queries: PosInt = 200
    mlflow: bool = True
    index: EvaluateIndex = Field(default_factory=EvaluateIndex)
    instance: InstanceSection = Field(default_factory=InstanceSection)
    grid: GridSection = Field(default_factory=GridSection)


# --- deploy, deployer, serve ---------------------------------------------------------------------------


class IndexSection(Section):
    """The deploy step (`index`): the bundle's model, inventory, folder, index kind and smoke test."""

    model: str = "models:/fashionrec@champion"
    precision: Literal["auto", "fp32", "int8"] = "auto"
    catalog: str | None = None
    manifest: str | None = None
    bundles: str = "bundles"
    kind: DeployIndexKind = "balltree"
    auto_exact_max: PosInt = 5000
    balltree: BallTreeParams | None = None
    brute: BruteParams | None = None
    hnsw: HnswParams | None = None
    milvus: MilvusParams | None = None
    recall_k: PosInt = 10
    target_recall: PosFloat | None = 0.95     # above 1: unreachable, ef_search goes to max_ef_search
    max_ef_search: PosInt = 1024
    recall_queries: PosInt = 200
    min_recall: Share = 0.9
    min_self_similarity: Annotated[float, Field(ge=-1, le=1)] = 0.99
    smoke_queries: NonNegInt = 5
    batch_size: PosInt = 32
    device: Device = "cpu"
    max_image_bytes: PosInt = 20_000_000
    activate: bool = True
    keep: PosInt = 5
    notify: list[str] = Field(default_factory=list)
    summary: str | None = None
    lock_wait_s: NonNegFloat = 600.0
    fetch_retries: NonNegInt = 3
    fetch_backoff_s: NonNegFloat = 0.5
    fetch_timeout_s: PosFloat = 10.0
    shard_size: NonNegInt = 0
    shards_dir: str | None = None
    shard_retries: NonNegInt = 1


class DeployerSection(Section):
    host: str = "127.0.0.1"
    port: Port = 8001
    webhook_secret_env: str = "FASHIONREC_WEBHOOK_SECRET"
    poll_interval_s: PosFloat = 30.0
    max_clock_skew_s: PosFloat = 300.0
    replay_memory: PosInt = 10_000
    log_level: LogLevel = "info"
    max_body_bytes: PosInt = 65_536
    max_json_depth: PosInt = 32
    header_timeout_s: PosFloat = 10.0
    body_timeout_s: PosFloat = 10.0
    max_connections: PosInt = 32
    timeout_keep_alive_s: PosFloat = 5.0
    refused_memory: PosInt = 20


# Pillow's names of the raster formats a decode can bound (no format that hands data to another program)
ImageFormat = Literal["JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"]


def _format_names(value: Any) -> Any:
    """A YAML list of format names, any case, as the tuple Pillow's names make (`png` -> `PNG`)."""
    if isinstance(value, list | tuple):
        return tuple(v.upper() if isinstance(v, str) else v for v in value)
    return value


Formats = Annotated[tuple[ImageFormat, ...], BeforeValidator(_format_names)]


class ServeSection(Section):
    host: str = "127.0.0.1"
    port: Port = 8000
    bundles: str | None = None
    bundle: str | None = None
    inventory_root: str | None = None
    max_upload_bytes: PosInt = 10_000_000
    max_image_pixels: PosInt = 50_000_000
    max_decode_mb: PosInt = 128
    decode_short_side: PosInt = 512
    min_image_side: PosInt = 8
    max_aspect_ratio: Annotated[float, Field(ge=1)] = 20.0
    max_k: PosInt = 50
    default_k: PosInt = 5
    watch_interval_s: NonNegFloat = 2.0
    intra_op_threads: NonNegInt = 0
    intra_op_spinning: bool = False
    compute_threads: PosInt = 2
    queue_size: NonNegInt = 8
    formats: Formats = ("JPEG", "MPO", "PNG", "WEBP")
    decode_workers: PosInt = 2
    decode_memory_mb: PosInt = 256
    decode_timeout_s: PosFloat = 10.0
    max_segments: PosInt = 1024
    max_jpeg_scans: PosInt = 100
    retry_after_s: PosInt = 1
    max_connections: PosInt = 1024
    timeout_keep_alive_s: PosFloat = 5.0
    header_timeout_s: PosFloat = 10.0
    body_timeout_s: PosFloat = 20.0
    malloc_mmap_threshold_kb: NonNegInt = 1024
    malloc_arena_max: NonNegInt = 2
    admin_token_env: str = "FASHIONREC_ADMIN_TOKEN"
    static_dir: str | None = None
    log_level: LogLevel = "info"
    access_log: bool = False


# --- train ---------------------------------------------------------------------------------------------


# Keys a candidate block may set only where another key makes them count: (key, arch or None for any,
# the condition under which it is read, as (other key, its default, the values that read it), why).
# A block setting one where it is not read is refused, so that no block names a setting it does not get.
_READ_WHEN: list[tuple[str, str | None, tuple[str, Any, tuple[Any, ...]], str]] = [
    ("trainable_blocks", "efficientnet", ("mode", "finetune", ("finetune",)),
     "only mode finetune trains a number of last blocks"),
    ("cosine_scale", "efficientnet", ("head", "linear", ("cosine",)), "only head cosine scales its logits"),
    ("views", "efficientnet", ("mode", "finetune", ("frozen", "finetune")),
     "only cached inputs (mode frozen|finetune) have views; mode full augments raw images"),
    ("crop_scale", "efficientnet", ("mode", "finetune", ("full",)),
     "only mode full crops raw images; frozen|finetune train on cached views"),
    ("color_jitter", "efficientnet", ("mode", "finetune", ("full",)),
     "only mode full jitters raw images; frozen|finetune train on cached views"),
    ("backbone_lr_mult", "efficientnet", ("mode", "finetune", ("finetune", "full")),
     "mode frozen trains no backbone layer"),
    ("drop_connect", "efficientnet", ("mode", "finetune", ("finetune", "full")),
     "mode frozen trains no block to drop"),
    ("pct_start", None, ("schedule", "cosine", ("onecycle",)),
     "only schedule onecycle warms up over pct_start"),
    ("warmup_epochs", None, ("schedule", "cosine", ("cosine",)),
     "only schedule cosine warms up over warmup_epochs (onecycle: pct_start)"),
    ("temperature", None, ("metric_loss", "none", ("supcon",)), "only metric_loss supcon has a temperature"),
    ("margin", None, ("metric_loss", "none", ("triplet",)), "only metric_loss triplet has a margin"),
]
_TRAINS = ("simple_cnn", "efficientnet")   # architectures with a training loop (pixels has none)


class CandidateBlock(BaseModel):
    """`train.models.<name>`: its `arch` here; the architecture's and training keys are checked, by name,
    with the model code (`fashionrec.train.config.train_config`, run at every train and evaluate start).
    Here: combinations where a key would be silently ignored, or would say what the model does not do."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    arch: Literal["pixels", "simple_cnn", "efficientnet"]

    @model_validator(mode="after")
    def _no_ignored_keys(self) -> CandidateBlock:
        block = {"arch": self.arch, **(self.model_extra or {})}
        for key, arch, (other, default, reads), why in _READ_WHEN:
            value = block.get(other, default)
            if key in block and arch in (None, self.arch) and value not in reads:
                raise ValueError(f"{key} is set but {other} is {value!r}: {why}")
        weight, loss = block.get("metric_weight", 0.0), block.get("metric_loss", "none")
        if self.arch in _TRAINS and (loss == "none") != (not weight):
            raise ValueError(f"metric_loss {loss!r} with metric_weight {weight!r}: a metric loss needs a "
                             "positive weight, and a weight needs a metric loss")
        if self.arch == "efficientnet" and "embedding_dim" in block and "embedding" not in block:
            raise ValueError("embedding_dim is set without embedding: the default embedding (centered) is "
                             "the 1280-d pooled features and embedding_dim only sizes the classifier's z; "
                             "say embedding: centered | pooled | pca | projection")
        return self


class DistributedSection(Section):
    """`train.distributed`: one DDP job of nodes x procs_per_node ranks (1 x 1: one plain process)."""

    nodes: PosInt = 1
    procs_per_node: PosInt = 1
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    master_port: Port = 29500
    timeout_s: PosFloat = 3600.0


Names = Annotated[list[str], Field(min_length=1)]


class TrainSection(Section):
    manifest: str = "data/validated/catalog/manifest.parquet"
    models_dir: str = "models"
    cache_dir: str = ".cache/features"
    checkpoints_dir: str = ".cache/checkpoints"
    device: Device = "auto"
    recipe: Literal["auto", "cpu", "cuda"] = "auto"   # auto: cuda where the run has a GPU (train.recipe)
    recipes: dict[Literal["cpu", "cuda"], Names] = Field(default_factory=dict)   # each recipe's candidates
    candidates: Names | None = None   # null: the recipe's (no recipes: every block of `models`)
    models: dict[str, CandidateBlock] = Field(default_factory=dict)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @model_validator(mode="after")
    def _names_have_blocks(self) -> TrainSection:
        named = [(f"recipes.{r}", names) for r, names in self.recipes.items()]
        named += [("candidates", self.candidates)] if self.candidates else []
        for where, names in named:
            missing = [n for n in names if n not in self.models]
            if missing:
                raise ValueError(f".{where}: {missing} have no block in train.models ({sorted(self.models)})")
        return self


class LabelReviewSection(Section):
    """`label_review`: the confident-learning review sheet of the training split (train/label_issues.py)."""

    candidate: str = "efficientnet_lite0"   # whose backbone, preprocessing and feature cache are used
    features: Literal["backbone", "trained"] = "backbone"
    folds: Annotated[int, Field(ge=2)] = 5
    group_by_sender: bool = True
    c: PosFloat = 0.01                # inverse L2 strength of the logistic regression
    max_iter: PosInt = 1000
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                       "predicted_neq_given", "low_normalized_margin",
                       "low_self_confidence"] = "prune_by_noise_rate"
    relabel_confidence: Share = 0.8   # the draft proposes relabel at or above this, else drop
    contact_sheet: PosInt = 64        # thumbnails in contact_sheet.png
    thumb_size: PosInt = 112
    out: str = "reports/labels"


# --- images, k8s, kfp ----------------------------------------------------------------------------------


class ImageBase(Section):
    image: str = "local"
    suite: str = "bookworm"
    packages: list[str] = Field(default_factory=list)
    mirror: str = "auto"


class ImagesSection(Section):
    serve: str | None = None
    pipeline: str | None = None
    build: list[Literal["serve", "pipeline"]] = Field(default_factory=lambda: ["serve"])
    base: ImageBase = Field(default_factory=ImageBase)
    cache: str = ".cache/images"
    max_serve_mb: PosInt = 400
    serve_extras: list[Literal["hnsw", "milvus-client"]] = Field(default_factory=list)


class K8sSection(Section):
    manifests: str = "deploy/k8s"
    version: str = "1.34.0"


class KfpData(Section):
    repo: str | None = None
    rev: str = "main"
    secret: str | None = None
    secret_env: dict[str, str] = Field(default_factory=dict)


class KfpMlflow(Section):
    config_map: str | None = None
    config_map_env: dict[str, str] = Field(default_factory=dict)
    secret: str | None = None
    secret_env: dict[str, str] = Field(default_factory=dict)


class KfpMilvus(Section):
    """The Secrets the deploy tasks read Milvus credentials from (the names deploy/k8s/milvus uses)."""

    secret: str = "fashionrec-milvus"
    token_key: str = "token"
    storage_secret: str = "fashionrec-milvus-storage"
    access_key_key: str = "access_key"
    secret_key_key: str = "secret_key"


class KfpRetry(Section):
    num_retries: NonNegInt = 0
    backoff_duration: str = "0s"
    backoff_factor: PosFloat = 2
    backoff_max_duration: str = "3600s"


class Toleration(Section):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KfpGpu(Section):
    pool: bool = False                    # the cluster has GPU nodes: train.recipe auto resolves to cuda
    accelerator: str = "nvidia.com/gpu"
    limit: PosInt = 1
    toleration: Toleration | None = None


class Resources(Section):
    cpu: str | None = None
    memory: str | None = None


class KfpSchedule(Section):
    name: str = "fashionrec-weekly"
    cron: str = "0 0 3 * * 1"
    max_concurrency: PosInt = 1


class KfpLocal(Section):
    pipeline_root: str = ".cache/kfp-local/runs"
    caching: bool = True
    source: str = "tiny"
    tiny_dir: str = ".cache/kfp-local/tiny"
    repo: str = ".cache/kfp-local/repo"
    tiny: dict[str, Any] = Field(default_factory=dict)   # dotted overrides, checked once applied


class KfpTrainer(Section):
    """`kfp.trainer`: the train step submits a Kubeflow Trainer TrainJob (kfp.local: trains in-process)."""

    enabled: bool = True
    runtime: str = "torch-distributed"
    image: str | None = None              # the nodes' image; null: kfp.image
    namespace: str | None = None          # null: the step's own namespace
    workspace_size: str = "50Gi"
    timeout_s: PosInt = 86_400
    poll_s: PosInt = 15


class KfpSection(Section):
    image: str | None = None
    package: str = "pipelines/training_pipeline.yaml"
    pipeline_name: str = "fashionrec-training"
    experiment: str = "fashionrec"
    host: str | None = None
    namespace: str | None = None
    data: KfpData = Field(default_factory=KfpData)
    mlflow: KfpMlflow = Field(default_factory=KfpMlflow)
    milvus: KfpMilvus = Field(default_factory=KfpMilvus)
    accelerators: dict[str, NonNegInt] = Field(default_factory=dict)
    retry: KfpRetry = Field(default_factory=KfpRetry)
    bundles_pvc: str | None = None
    bundles_mount: str = "/srv/bundles"
    training_parallelism: PosInt = 1
    inventory_parallelism: PosInt = 1
    gpu: KfpGpu = Field(default_factory=KfpGpu)
    resources: dict[str, Resources] = Field(default_factory=dict)
    schedule: KfpSchedule = Field(default_factory=KfpSchedule)
    local: KfpLocal = Field(default_factory=KfpLocal)
    trainer: KfpTrainer = Field(default_factory=KfpTrainer)


class ParamsTree(Section):
    """The whole of params.yaml; an absent section takes its defaults."""

    seed: int = 42
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    intake: IntakeSection = Field(default_factory=IntakeSection)
    subset: SubsetSection = Field(default_factory=SubsetSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    describe: DescribeSection = Field(default_factory=DescribeSection)
    synth: SynthSection = Field(default_factory=SynthSection)
    select: SelectSection = Field(default_factory=SelectSection)
    export: ExportSection = Field(default_factory=ExportSection)
    register_: RegisterSection = Field(default_factory=RegisterSection, alias="register")
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    index: IndexSection = Field(default_factory=IndexSection)
    deployer: DeployerSection = Field(default_factory=DeployerSection)
    serve: ServeSection = Field(default_factory=ServeSection)
    train: TrainSection = Field(default_factory=TrainSection)
    label_review: LabelReviewSection = Field(default_factory=LabelReviewSection)
    images: ImagesSection = Field(default_factory=ImagesSection)
    k8s: K8sSection = Field(default_factory=K8sSection)
    kfp: KfpSection = Field(default_factory=KfpSection)


def section_defaults(name: str) -> dict[str, Any]:
    """The top-level defaults of section `name` that are values (a null default is the key's absence)."""
    field = next((f for key, f in ParamsTree.model_fields.items() if (f.alias or key) == name), None)
    if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
        return {}
    return {k: v for k, v in field.annotation().model_dump(by_alias=True).items() if v is not None}


# --- one line per error --------------------------------------------------------------------------------

EXPECTED = {
    "int_type": "expected an integer", "int_parsing": "expected an integer",
    "int_from_float": "expected an integer", "float_type": "expected a number",
    "float_parsing": "expected a number", "bool_type": "expected true or false (unquoted)",
    "bool_parsing": "expected true or false (unquoted)", "string_type": "expected a string",
    "list_type": "expected a list", "dict_type": "expected a mapping", "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}
MAX_SHOWN = 80   # characters of a bad value shown in the message


def describe_error(error: Mapping[str, Any], prefix: str = "") -> str:
    """One pydantic error as `dotted.key: what was expected, got VALUE`."""
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]   # keys only
    key = ".".join(([prefix] if prefix else []) + loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key missing"
    if kind in EXPECTED:
        what = EXPECTED[kind]
    elif kind == "literal_error":
        what = f"expected one of {ctx.get('expected')}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
        bound = next(iter(ctx.values()))
        what = f"expected a value {sign[kind]} {bound}"
    elif kind == "value_error":   # a cross-key rule: its own sentence (".sub.key: why" names a key below)
        msg = str(ctx.get("error", error.get("msg", kind)))
        return f"{key}{msg}" if msg.startswith(".") else f"{key}: {msg}"
    elif kind == "too_short":
        what = f"expected at least {ctx.get('min_length')} item(s)"
    elif kind == "too_long":
        what = f"expected at most {ctx.get('max_length')} item(s)"
    else:
        what = str(error.get("msg", kind)).lower()
    shown = repr(error.get("input"))
    return f"{key}: {what}, got {shown if len(shown) <= MAX_SHOWN else shown[:MAX_SHOWN] + '...'}"


def check(model: type[S], data: Any, prefix: str = "", error: type[FashionrecError] = ParamsError) -> S:
    """`data` validated as `model`, or `error` (a `ParamsError` unless a step has its own) naming the first
    bad key (`params: key: why`); further errors are counted on the same line."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise error(f"params: {describe_error(errors[0], prefix)}{more}") from None

