#!/usr/bin/env bash
# The phantom reproduction of the seed study (docs/experiments.md) and the pruning benchmark (docs/tune.md), in one
# go so it takes the shared heavy lock once:
#   flock /work/heavy.lock nice -n 5 tools/run_tune_experiments.sh WORK
# Every step is resumable: rerunning skips finished phantom/cache/trials.
set -euo pipefail
WORK=${1:?usage: tools/run_tune_experiments.sh WORK_DIR}
CXR=${CXR:-cxr}
PY=${PY:-python}
mkdir -p "$WORK"
SPACES=docs/experiments
BENCH_EPOCHS=6
if [ "${DRY:-0}" = 1 ]; then  # a smoke run of every step: 150 images, 1 epoch per trial
  PH_N=150; BENCH_TRIALS=3; BENCH_EPOCHS=2; SPACES="$WORK/spaces"; mkdir -p "$SPACES"
  for f in docs/experiments/*.toml; do sed 's/^epochs = 4$/epochs = 1/' "$f" > "$SPACES/$(basename "$f")"; done
fi
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"; }
stamp phantom
[ -f "$WORK/ph/Data_Entry_2017.csv" ] || $CXR phantom "$WORK/ph" -n "${PH_N:-1200}" --size 128 --seed 1 --workers 2
stamp prepare
$CXR prepare "$WORK/ph" "$WORK/c128" --size 128 --quiet
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  stamp pruning benchmark
  $PY tools/bench_tune_pruning.py "$WORK/c128" --out "$WORK/pruning" --trials "${BENCH_TRIALS:-16}" --epochs "$BENCH_EPOCHS" \
      --pruners "${BENCH_PRUNERS:-sha,hyperband}"
fi
for s in optimizer batch_lr image_size channels head arch arch_large accum accum_seeds loss_weight; do
  stamp "study $s"
  $CXR tune "$WORK/c128" --space "$SPACES/$s.toml" --grid --study $s --out "$WORK/studies/$s"
done
stamp "512-px phantoms"
[ -f "$WORK/ph512/Data_Entry_2017.csv" ] || $CXR phantom "$WORK/ph512" -n "${PH_N:-1200}" --size 512 --seed 1 --workers 2
$CXR prepare "$WORK/ph512" "$WORK/c512" --size 512 --quiet
stamp "study image_size_512"
$CXR tune "$WORK/c512" --space "$SPACES/image_size_512.toml" --grid --study image_size_512 --out "$WORK/studies/image_size_512"
stamp ensemble
$CXR ensemble --from-tune "$WORK/studies/arch" --top-k 3 --cache "$WORK/c128" --out "$WORK/ensemble" --overwrite --quiet
if [ "${REAL_FILMS:-1}" = 1 ]; then
  stamp "real films study"
  { $CXR prepare /work/shared/data/nih-sample "$WORK/nih128" --size 128 --quiet &&
    $CXR tune "$WORK/nih128" --space "$SPACES/real_head_lr.toml" --grid --study real_head_lr \
      --out "$WORK/studies/real_head_lr"; } || echo "real films study failed"
fi
stamp figures
$PY tools/tune_experiments_report.py "$WORK" --img "${IMG:-docs/img}" || echo "figures failed (rerun: $PY tools/tune_experiments_report.py $WORK)"
stamp done
