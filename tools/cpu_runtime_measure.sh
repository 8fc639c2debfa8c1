#!/bin/bash
# The measurements of docs/benchmarks.md "CPU runtimes (issue 15)", in one go; run it under the shared lock:
#   flock /work/heavy.lock nice -n 5 bash tools/cpu_runtime_measure.sh OLD_SRC [WORKDIR] [FILMS]
# OLD_SRC: the src/ of a checkout before issue 15 (the before figures); FILMS: a folder of full-size films
# (default: 5 copies of the 12 real 1024-px NIH PNGs and 4 of the real CR DICOM of ../shared/data).
set -e
cd "$(dirname "$0")/.."
NEW=$PWD/src; OLD=${1:?give the src/ of the checkout to compare with}; W=${2:-/tmp/cpu_runtime}; FILMS=${3:-$W/films}
PY=${PY:-python}
mkdir -p "$W"
if [ ! -d "$FILMS" ]; then
  mkdir -p "$FILMS"; D=${CXR_SHARED_DATA:-../shared/data}
  for c in 1 2 3 4 5; do for f in "$D"/nih-fullres/*.png; do cp "$f" "$FILMS/c${c}_$(basename "$f")"; done; done
  for c in 1 2 3 4; do cp "$D/dicom/cr_monochrome2_jpeg_baseline.dcm" "$FILMS/cr_$c.dcm"; done
fi
echo "bench start $(date +%T) load $(cat /proc/loadavg)"
PYTHONPATH=$NEW $PY -m cxrkit.cli bench infer --workdir "$W" --rounds 5 --n 32 --threads 2 --folder "$FILMS" \
  --folder-n 64 --backends torch-fp32 --backends onnx-fp32 --backends openvino-fp32 --backends openvino-int8 \
  --out "$W/report.json" > "$W/stdout.txt"
echo "bench end $(date +%T) load $(cat /proc/loadavg)"; cat "$W/report.md"
B=$W/densenet121_224
for i in 1 2; do for side in OLD NEW; do src=$OLD; [ $side = NEW ] && src=$NEW
  echo "memory $side: $(PYTHONPATH=$src $PY tools/ov_memory.py "$W/model.int8.onnx" --max-batch 16 --rounds 1 --threads 2 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
done; done
for i in 1 2 3; do for side in OLD NEW; do src=$OLD; [ $side = NEW ] && src=$NEW
  echo "folder $side openvino-int8: $(PYTHONPATH=$src $PY tools/folder_throughput.py "$B" "$FILMS" openvino int8 --onnx "$W/model.int8.onnx" 2>/dev/null | tail -1) load $(cut -d' ' -f1 /proc/loadavg)"
done; done
