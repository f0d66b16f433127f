#!/usr/bin/env bash
# The one prepared script for a lent GPU (docs/research/gpu-h100.md): the SD-1.5-shaped discovery bench, a profile of one
# training process alone on the card, then toy-model variants trained side by side, each judged on the GPU.
# VARIANTS lists `encoder:object-order` pairs (train-model --text-encoder / --object-order). STEPS=auto sizes the
# cosine schedule from the timed (unprofiled) rate so that it ends near MINUTES. Runs cut short on an earlier lease resume
# from .gpu/m-<encoder>-<order>. Run from the repo root with the wheels in .whl (diffusers, open_clip and friends
# are not on the device image). Dry run on a CPU:
#   DEV=cpu STEPS=4 BATCH=16 WORKERS=1 MINUTES=1 N=8 BENCH= OUT=/tmp/o bash experiments/gpu_session.sh
set -u
DEV=${DEV:-cuda} STEPS=${STEPS:-auto} BATCH=${BATCH:-128} WORKERS=${WORKERS:-5} MINUTES=${MINUTES:-5} N=${N:-200}
VARIANTS=${VARIANTS:-"random:reading toy-clip:reading"} BENCH=${BENCH-discovery} PROFILE=${PROFILE:-1}
source "$(dirname "$0")/gpu_env.sh"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import torch, diffusers, transformers, open_clip; print(torch.__version__, diffusers.__version__, transformers.__version__, open_clip.__version__)"
} > "$OUT/bench_sd15.jsonl" 2>&1
for b in $BENCH; do  # before training, so nothing else shares the card
  case $b in
    discovery) timeout 120 cones bench discovery --preset sd15 --device "$DEV" --dtype float16 --batch 4 --repeats 5 --profile 12 --json ;;
    generate) timeout 75 cones bench generate --preset sd15 --device "$DEV" --dtype float16 --combinations 8 --steps 2 --repeats 3 --json ;;
  esac >> "$OUT/bench_sd15.jsonl" 2>> "$OUT/logs.txt"
done
cat "$OUT/bench_sd15.jsonl"

rate=""
if [ "$PROFILE" = 1 ]; then  # where a training step's time goes, alone on the card (docs/research/gpu-h100.md)
  timeout 120 python3 experiments/gpu_profile_train.py --device "$DEV" --batch-size "$BATCH" --workers "$WORKERS" --steps 40 --timed-steps "${TIMED:-200}" \
    > "$OUT/profile.txt" 2>&1; head -n 30 "$OUT/profile.txt"
  rate=$(sed -n "s/^unprofiled: .*: \([0-9.]*\) steps\/s$/\1/p" "$OUT/profile.txt")
fi
if [ "$STEPS" = auto ]; then
  # A run is bound by its own host time, not the card: on the second lease two runs side by side
  # each kept 9.8 of one run's 10.75 steps/s (docs/research/gpu-h100.md). Assumed to hold up to two runs;
  # beyond that, the card's share. 0.9: the margin for checkpoints, so the schedule ends in MINUTES.
  STEPS=$(python3 -c "n = len('$VARIANTS'.split()); r = float('${rate:-0}' or 0); print(min(40000, max(1500, int(0.9 * r * min(1, 2 / n) * 60 * $MINUTES))))")
fi
echo "steps per variant: $STEPS (profiled ${rate:-?} steps/s)" | tee -a "$OUT/logs.txt"

for v in $VARIANTS; do
  te=${v%%:*} order=${v##*:} m=m-${v/:/-}
  # A run cut by --max-minutes on an earlier lease, carried back in .gpu/, continues (--resume).
  resume=""; if [ -d ".gpu/$m" ]; then rm -rf "/tmp/$m"; cp -r ".gpu/$m" /tmp/; resume=--resume; fi
  timeout $(python3 -c "print(int(60 * $MINUTES + 120))") \
    cones toy train-model --out "/tmp/$m" --steps "$STEPS" --batch-size "$BATCH" --text-encoder "$te" --object-order "$order" \
      --device "$DEV" --workers "$WORKERS" --max-minutes "$MINUTES" $resume --json > "$OUT/result-$m.jsonl" 2> "/tmp/train-$m.log" &
done
wait
for v in $VARIANTS; do
  m=m-${v/:/-}
  timeout 120 cones toy eval-model --model "/tmp/$m" --device "$DEV" --n "$N" --json >> "$OUT/result-$m.jsonl" 2>> "/tmp/train-$m.log"
  tar czf "$OUT/model-$m.tgz" -C /tmp "$m"
  { echo "== $m"; tr '\r' '\n' < "/tmp/train-$m.log" | grep -v "Writing model shards" | tail -n 25; } >> "$OUT/logs.txt"
  echo "== $m"; cat "$OUT/result-$m.jsonl"
done
tail -n 60 "$OUT/logs.txt"
