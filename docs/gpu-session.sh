#!/usr/bin/env bash
# The one prepared script for a lent GPU (issues #3, #4): SD-1.5-shaped benches, then two toy-model
# trainings side by side (frozen random vs frozen toy-CLIP text encoder), each judged on the GPU.
# PROFILE=1 profiles 60 steps first. Run from the repo root with the wheels in .whl (diffusers, open_clip and friends are not on the
# device image); runs cut short on an earlier lease resume from .gpu/m-<encoder>. Dry run on a CPU: DEV=cpu STEPS=4 BATCH=16 WORKERS=1 MINUTES=1 N=8 OUT=/tmp/o bash docs/gpu-session.sh
set -u
DEV=${DEV:-cuda} STEPS=${STEPS:-6000} BATCH=${BATCH:-512} WORKERS=${WORKERS:-6} MINUTES=${MINUTES:-4.5} N=${N:-200}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
# `timeout` runs programs, not shell functions: the CLI as a file on PATH (no entry point without an install)
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -c "from cones_cli.app import app; app()" "$@"\n' > /tmp/bin/cones && chmod +x /tmp/bin/cones
export PATH=/tmp/bin:$PATH

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import torch, diffusers, transformers, open_clip; print(torch.__version__, diffusers.__version__, transformers.__version__, open_clip.__version__)"
} > "$OUT/bench_sd15.jsonl" 2>&1
if [ "$DEV" = cuda ]; then  # before training, so nothing else shares the card
  timeout 90 cones bench discovery --preset sd15 --device cuda --dtype float16 --batch 4 --repeats 5 --json >> "$OUT/bench_sd15.jsonl" 2>> "$OUT/logs.txt"
  timeout 75 cones bench generate --preset sd15 --device cuda --dtype float16 --combinations 8 --steps 2 --repeats 3 --json >> "$OUT/bench_sd15.jsonl" 2>> "$OUT/logs.txt"
  cat "$OUT/bench_sd15.jsonl"
fi

if [ "${PROFILE:-0}" = 1 ]; then  # where a training step's time goes, alone on the card (docs/gpu-h100.md)
  timeout 150 python3 docs/gpu-profile-train.py --device "$DEV" --batch-size "$BATCH" --workers "$WORKERS" --steps 60 \
    > "$OUT/profile.txt" 2>&1; head -n 40 "$OUT/profile.txt"
fi

for te in random toy-clip; do
  # A run cut by --max-minutes on an earlier lease, carried back in .gpu/, continues (--resume).
  resume=""; if [ -d ".gpu/m-$te" ]; then rm -rf "/tmp/m-$te"; cp -r ".gpu/m-$te" /tmp/; resume=--resume; fi
  timeout $(python3 -c "print(int(60 * $MINUTES + 120))") \
    cones toy train-model --out "/tmp/m-$te" --steps "$STEPS" --batch-size "$BATCH" --text-encoder "$te" \
      --device "$DEV" --workers "$WORKERS" --max-minutes "$MINUTES" $resume --json > "$OUT/result-$te.jsonl" 2> "/tmp/train-$te.log" &
done
wait
for te in random toy-clip; do
  timeout 120 cones toy eval-model --model "/tmp/m-$te" --device "$DEV" --n "$N" --json >> "$OUT/result-$te.jsonl" 2>> "/tmp/train-$te.log"
  tar czf "$OUT/model-$te.tgz" -C /tmp "m-$te"
  { echo "== $te"; tr '\r' '\n' < "/tmp/train-$te.log" | grep -v "Writing model shards" | tail -n 25; } >> "$OUT/logs.txt"
  echo "== $te"; cat "$OUT/result-$te.jsonl"
done
tail -n 60 "$OUT/logs.txt"
