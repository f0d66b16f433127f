#!/usr/bin/env bash
# The crowds plan on one lent GPU (docs/research/toy-model.md, "Three and four objects: the plan"): the shipped 8,750-step
# toy model continued on scenes of up to four objects (crowds at 3.0–3.5 px, a quarter of the scenes each three and four
# objects, left-to-right order) to STOP_AT of a cosine ending at STEPS, then judged on the card (`cones toy eval-model`:
# counts 1–4). The model folder (weights, training_log.json with its segments, loss curve) comes back as
# $OUT/toy-model-crowds.tgz; a run cut by --max-minutes resumes on the next lease from it, unpacked into .gpu/ and carried.
# Run from the repo root with the wheels in .whl (docs/research/gpu-h100.md, "Running it again"). Dry run on a CPU:
#   DEV=cpu BATCH=8 WORKERS=1 STOP_AT=8753 MINUTES=1 N=2 EVAL_STEPS=4 OUT=/tmp/o bash experiments/gpu_crowds.sh
set -u
DEV=${DEV:-cuda} BATCH=${BATCH:-128} WORKERS=${WORKERS:-5} STEPS=${STEPS:-16750} STOP_AT=${STOP_AT:-12750}
COUNTS=${COUNTS:-1:0.2,2:0.3,3:0.25,4:0.25} MINUTES=${MINUTES:-7} N=${N:-200} EVAL_STEPS=${EVAL_STEPS:-25}
source "$(dirname "$0")/gpu_env.sh"

m=/tmp/toy-model-crowds
rm -rf "$m"
# Start from the shipped weights and log (its four segments stay in the log, so `make toy-model-crowds` replays all),
# or from the checkpoint an earlier lease brought back.
if [ -d .gpu/toy-model-crowds ]; then cp -r .gpu/toy-model-crowds "$m"; else cp -r cones_tasks/toyworld/shipped/toy-model "$m"; fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; date -u; } > "$OUT/logs.txt"
timeout "$(python3 -c "print(int(60 * $MINUTES + 120))")" \
  cones toy train-model --out "$m" --resume --steps "$STEPS" --stop-at "$STOP_AT" --batch-size "$BATCH" --object-order left-to-right \
    --object-counts "$COUNTS" --crowd-radius 3.0,3.5 --device "$DEV" --workers "$WORKERS" --max-minutes "$MINUTES" --json \
    > "$OUT/train.json" 2> /tmp/train.log
timeout 300 cones toy eval-model --model "$m" --device "$DEV" --n "$N" --steps "$EVAL_STEPS" --json > "$OUT/eval.json" 2>> /tmp/train.log
tar czf "$OUT/toy-model-crowds.tgz" -C /tmp toy-model-crowds
python3 -c "import json; print('segments', [s[:2] for s in json.load(open('$m/training_log.json'))['segments']])" | tee -a "$OUT/logs.txt"
tr '\r' '\n' < /tmp/train.log | grep -v "Writing model shards\|Loading weights" | tail -n 20 >> "$OUT/logs.txt"
tail -n 25 "$OUT/logs.txt"; cat "$OUT/eval.json"
