#!/usr/bin/env bash
# Issue 25's levers on the cpu recipe (efficientnet_lite0), trained on a GPU machine on the same 260 px
# catalog images as bench/gpu_recipe.sh (run after its `setup`, carrying .gpu/data.tar): each lever
# under its own name in $OUT/<name>/, beside the plain recipe's figures (gpu_recipe/efficientnet_lite0.json).
set -uo pipefail
R() { NAME=$1 SET=$2 bash bench/gpu_recipe.sh run efficientnet_lite0; }
FINAL='fit_on=train+validation epochs_source=validation-best-epoch-8-of-8-make-run-2026-12-02'
KIDS='attribute_pos_weight=balanced attribute_threshold=validation group_weights={"kids":3.0}'
R final "$FINAL"
R kids "$KIDS"
R both "$FINAL $KIDS"
R again ""      # the plain recipe once more: the run-to-run spread on CUDA
