"""Benchmarks registered on `cones bench` (see cones_cli/bench.py): discovery and masked generation (issue #4)."""

from __future__ import annotations

import typer

from cones_cli.bench import app
from cones_cli.output import emit

_PRESET_HELP = "UNet shape: tiny (tests), toy (the toy model's), sd15 (SD-1.5's published config; GPU-sized)."
_DEVICE_HELP = "torch device, e.g. cpu or cuda."


def _unet(preset: str, device: str, dtype: str, threads: int):
    import torch

    from cones_tasks.neurons.benchmarks import preset_unet

    if threads:
        # On a shared CPU, one thread per op is far steadier: a parallel region waits for its slowest thread.
        torch.set_num_threads(threads)

    unet, tokens = preset_unet(preset)  # type: ignore[arg-type]
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype):
        raise typer.BadParameter(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16", param_hint="--dtype")
    if target != torch.float32 or device != "cpu":
        unet = unet.to(device=device, dtype=target)
    return unet.eval(), tokens


@app.command("discovery")
def discovery(
    preset: str = typer.Option("toy", help=_PRESET_HELP),
    batch: int = typer.Option(4, min=1, help="images per step"),
    repeats: int = typer.Option(5, min=1, help="timed steps of each kind (minimum reported)"),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    dtype: str = typer.Option("float32", help="UNet dtype (float32, float16, bfloat16)"),
    threads: int = typer.Option(1, min=0, help="torch CPU threads (0: torch's default)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """One Cones score step vs one K/V fine-tuning step (AdamW), same UNet and batch; target ratio ≤ 1.10."""
    import torch

    from cones_tasks.neurons.benchmarks import bench_discovery

    torch.manual_seed(0)
    unet, tokens = _unet(preset, device, dtype, threads)
    result = bench_discovery(unet, tokens=tokens, batch=batch, repeats=repeats)
    emit({"preset": preset, "threads": threads, **result}, as_json=as_json, title="cones bench discovery")


@app.command("generate")
def generate(
    preset: str = typer.Option("toy", help=_PRESET_HELP),
    combinations: int = typer.Option(8, min=1, help="B: subject combinations in the batch"),
    steps: int = typer.Option(2, min=1, help="denoising steps per image"),
    density: float = typer.Option(0.01, min=0.0, max=1.0, help="fraction of neurons each random mask shuts"),
    repeats: int = typer.Option(5, min=1, help="timed runs of each mode (minimum reported)"),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    dtype: str = typer.Option("float32", help="UNet dtype (float32, float16, bfloat16)"),
    threads: int = typer.Option(1, min=0, help="torch CPU threads (0: torch's default)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Images/s: per-sample masked batch vs unmasked batch vs one at a time with shut; target masked ≥ 0.9 × unmasked."""
    from cones_tasks.neurons.benchmarks import bench_generate

    unet, tokens = _unet(preset, device, dtype, threads)
    result = bench_generate(unet, tokens=tokens, combinations=combinations, steps=steps, density=density, repeats=repeats)
    emit({"preset": preset, "threads": threads, **result}, as_json=as_json, title="cones bench generate")
