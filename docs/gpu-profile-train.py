"""Profile a short toy-model training run: where does a step's time go? (docs/gpu-h100.md)

The H100 run trained at 3.3 steps/s per process where tens were expected. Run this first on the
next lease, alone on the card:

    python3 docs/gpu-profile-train.py --device cuda --batch-size 512 --workers 6 --steps 60

It prints the wall rate and the top operators by self CPU and self device time. A data-bound
loop shows up as time in the DataLoader's `__next__`; a launch-bound one as many small kernels
with idle device time between them.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from cones_tasks.toyworld.train_model import TrainModelParams, train_toy_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--text-encoder", default="random")
    args = parser.parse_args()
    params = TrainModelParams(steps=args.steps, batch_size=args.batch_size, workers=args.workers, device=args.device,
                              text_encoder=args.text_encoder, checkpoint_every=10**9, warmup=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with tempfile.TemporaryDirectory() as out, profile(activities=activities) as prof:
        start = time.perf_counter()
        train_toy_model(out, params, progress=False)
        wall = time.perf_counter() - start
    print(f"{args.steps} steps at batch {args.batch_size} in {wall:.1f} s (including setup and the final checkpoint): "
          f"{args.steps / wall:.2f} steps/s")
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=15))
    if args.device.startswith("cuda"):
        print(table.table(sort_by="self_cuda_time_total", row_limit=15))


if __name__ == "__main__":
    main()
