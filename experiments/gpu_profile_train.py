"""Profile a short toy-model training run: where does a step's time go? (docs/research/gpu-h100.md)

The first H100 lease trained at 3.3 steps/s per process, the second at ~10 (batch 128, one torch
thread), where tens were expected. experiments/gpu_session.sh runs it alone on the card, as:

    python3 experiments/gpu_profile_train.py --device cuda --batch-size 128 --workers 5 --steps 40 --timed-steps 200

It prints the wall rate and the top operators by self CPU and self device time. A data-bound
loop shows up as time in the DataLoader's `__next__`; a launch-bound one as many small kernels
with idle device time between them.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.profiler import ProfilerActivity, profile

from cones_tasks.toyworld.train_model import TrainModelParams, train_toy_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60, help="steps under the profiler")
    parser.add_argument("--timed-steps", type=int, default=200, help="steps timed without it, first")
    parser.add_argument("--text-encoder", default="random")
    args = parser.parse_args()

    def params(steps: int) -> TrainModelParams:
        return TrainModelParams(steps=steps, batch_size=args.batch_size, workers=args.workers, device=args.device,
                                text_encoder=args.text_encoder, checkpoint_every=10**9, warmup=1)

    # Unprofiled first: the rate a real run gets (experiments/gpu_session.sh sizes its schedule from this line).
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_toy_model(out, params(args.timed_steps), progress=False)
        wall = time.perf_counter() - start
    print(f"unprofiled: {args.timed_steps} steps at batch {args.batch_size} in {wall:.1f} s "
          f"(including set-up and the final checkpoint): {args.timed_steps / wall:.2f} steps/s")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with tempfile.TemporaryDirectory() as out, profile(activities=activities, acc_events=True) as prof:
        start = time.perf_counter()
        train_toy_model(out, params(args.steps), progress=False)
        wall = time.perf_counter() - start
    print(f"profiled: {args.steps} steps in {wall:.1f} s")
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=15))
    if args.device.startswith("cuda"):
        print(table.table(sort_by="self_cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
