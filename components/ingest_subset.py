"""ingest + subset (DVC stages `ingest`, `subset`): the source folder -> a self-contained dataset subset.

The two DVC stages run in one task because ingest's manifest points at the source's own files, which
only this pod sees; subset copies the chosen images, so the `subset` artifact is all later tasks need.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def ingest_subset(source: str, ingest_params: dict, subset_params: dict, manifest: Output[Dataset],
                  subset: Output[Dataset]):
    """`fashionrec ingest` then `fashionrec subset`, the outputs written into the two artifacts."""
    import tempfile
    from pathlib import Path

    from fashionrec.data.ingest import ingest
    from fashionrec.data.subset import subset as make_subset
    from fashionrec.data.subset import subset_params
    from fashionrec.kfp.io import component_params

    p = component_params({"ingest": ingest_params, "subset": subset_params})
    s = p.section("ingest")
    src = source if source == "auto" else Path(source)
    found = ingest(src, Path(manifest.path), s, shared_path=p.path(s.get("shared_path", "shared")),
                   download_dir=Path(tempfile.mkdtemp(prefix="fashionrec-download-")))
    manifest.metadata.update({"source": found.source, "n_images": found.n_images, "problems": found.problems})
    s = p.section("subset")  # the pipeline trains on the product subset (subset.product, e.g. catalog)
    made = make_subset(Path(manifest.path) / "manifest.parquet", Path(subset.path),
                       subset_params(s, s["product"]))
    subset.metadata.update({"policy": made.policy, "classes": made.classes, "n_images": made.n_images,
                            "counts": made.counts})
