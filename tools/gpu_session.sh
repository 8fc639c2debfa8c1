#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in one call on the lent GPU machine (see docs/benchmarks.md).
#
#   bash tools/gpu_session.sh [STEP ...]     steps: env tests train infer prepare loader dn121
#                                            int8model (default: all but the last two)
#
# Expects the checkout as the working directory, with (git-ignored, carried by the device tool):
#   .whl/   wheels of packages the GPU image lacks (pydicom), installed to /tmp/site
#   .data/  nih-fullres/ (the 12 real 1024-px NIH films) and Data_Entry_2017.csv from ../shared/data/nih-sample
# Writes logs and JSON results to $OUT (default runs/gpu). Each step has its own time limit so one hang cannot eat
# the whole call.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export OUT
cxr() { python3 -m cxrkit.cli "$@"; }
export -f cxr
run_step() {  # name seconds command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc in $((SECONDS - t0))s"
  tail -n 12 "$OUT/$name.log"
}
nih_set() {  # n -> /tmp/nih$n (real NIH films repeated under unique names; for timing only)
  [ -f "/tmp/nih$1/Data_Entry_2017.csv" ] ||
    python3 tools/nih_bench_set.py .data/nih-fullres .data/Data_Entry_2017.csv "/tmp/nih$1" --n "$1" >/dev/null
}

steps=${*:-env train infer tests prepare loader}
for s in $steps; do
  case $s in
    env)
      { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
        nproc; python3 -c 'import sys, torch, torchvision, timm, numpy, cv2; print(sys.version); print("torch",
torch.__version__, "cuda", torch.version.cuda, "tv", torchvision.__version__, "timm", timm.__version__, "numpy",
numpy.__version__, "cv2", cv2.__version__)'
        python3 -c 'import cxrkit, cxrkit.cli; print("cxrkit", cxrkit.__version__)'; } >"$OUT/env.txt" 2>&1
      cat "$OUT/env.txt" ;;
    tests)
      run_step pytest_gpu 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_training.py \
        tests/test_loader.py ;;
    train)
      nih_set 2048
      run_step bench_train 300 python3 -m cxrkit.cli bench train --device cuda --source /tmp/nih2048 \
        --work-dir /tmp/bench_train --steps 100 --warmup 15 --out "$OUT/bench_train.json" ;;
    infer)
      run_step bench_infer 120 python3 -m cxrkit.cli bench infer --device cuda --batch-size 256 --precision bf16 \
        --compile --workdir /tmp/bench_infer ;;
    prepare)
      nih_set 4000
      run_step bench_prepare 90 python3 -m cxrkit.cli bench prepare /tmp/nih4000 --size 256 --workers 16 --repeat 2 ;;
    loader)
      run_step bench_loader 40 python3 -m cxrkit.cli bench loader /tmp/bench_train/cache_256 --batch-size 256 \
        --epochs 3 --device cuda ;;
    dn121)  # a CheXNet-recipe DenseNet-121 trained on 20,000 phantom films, evaluated with localisation
      dn121() {
        cxr phantom /tmp/ph20k --n 20000 --size 256 --seed 0 --workers 16 &&
        cxr prepare /tmp/ph20k /tmp/ph20k_cache --size 256 --quiet &&
        cxr train /tmp/ph20k_cache --out /tmp/run_dn121 --arch densenet121 --epochs 16 --batch-size 256 --compile \
          --quiet &&
        cxr evaluate /tmp/run_dn121/bundle /tmp/ph20k_cache --out /tmp/eval_dn121 --device cuda --quiet &&
        cp /tmp/eval_dn121/metrics.json "$OUT/dn121_metrics.json" &&
        cp /tmp/run_dn121/history.jsonl "$OUT/dn121_history.jsonl" &&
        cp /tmp/eval_dn121/report.html "$OUT/dn121_report.html"
      }
      export -f dn121
      run_step dn121 480 bash -c dn121 ;;
    int8model)  # a DenseNet-121 for the INT8 accuracy check on a 2-core machine: weights come back as fp16
      int8model() {  # (the fetch limit is 16 MB a file); tools/fp16_bundle.py turns them back into a bundle
        cxr phantom /tmp/ph8k --n 8000 --size 256 --seed 0 --workers 16 &&
        cxr prepare /tmp/ph8k /tmp/ph8k_cache --size 256 --quiet &&
        cxr train /tmp/ph8k_cache --out /tmp/run_int8 --arch densenet121 --epochs 10 --batch-size 128 --quiet &&
        python3 tools/fp16_bundle.py pack /tmp/run_int8/bundle "$OUT/int8model" &&
        cp /tmp/run_int8/history.jsonl "$OUT/int8model_history.jsonl"
      }
      export -f int8model
      run_step int8model 420 bash -c int8model ;;
    *) echo "unknown step $s" ;;
  esac
done
