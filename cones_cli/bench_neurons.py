"""Benchmarks registered on `cones bench` (see cones_cli/bench.py): discovery and masked generation."""

from __future__ import annotations

from typing import Annotated

import typer

from cones_cli.output import emit

app = typer.Typer(add_completion=False)  # added to `cones bench` by cones_cli/bench.py

# Options both benchmarks share.
Preset = Annotated[str, typer.Option(help="UNet shape: tiny (tests), toy (the toy model's), sd15 (SD-1.5's published config; GPU-sized).")]
Device = Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")]
Dtype = Annotated[str, typer.Option(help="UNet dtype (float32, float16, bfloat16).")]
Threads = Annotated[int, typer.Option(min=0, help="torch CPU threads (0: torch's default).")]
Repeats = Annotated[int, typer.Option(min=1, help="timed runs of each kind (minimum reported).")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _unet(preset: str, device: str, dtype: str, threads: int):
    import torch

    from cones_lab.benchmarks import preset_unet

    if threads:
        # On a shared CPU, one thread per op is far steadier: a parallel region waits for its slowest thread.
        torch.set_num_threads(threads)
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype):
        raise typer.BadParameter(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16", param_hint="--dtype")
    unet, tokens = preset_unet(preset)  # type: ignore[arg-type]
    if target != torch.float32 or device != "cpu":
        unet = unet.to(device=device, dtype=target)
    return unet.eval(), tokens


@app.command("discovery")
def discovery(
    preset: Preset = "toy",
    batch: Annotated[int, typer.Option(min=1, help="images per step")] = 4,
    repeats: Repeats = 5,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    threads: Threads = 1,
    profile: Annotated[int, typer.Option(min=0, help="also list each step's N costliest operators (torch.profiler)")] = 0,
    lora_rank: Annotated[int, typer.Option(min=1, help="rank of the LoRA step timed beside them (ratio_to_lora)")] = 4,
    as_json: AsJson = False,
) -> None:
    """One Cones score step vs one K/V fine-tuning step (AdamW) and one LoRA step, same UNet and batch; target ratio ≤ 1.10."""
    from cones_lab.benchmarks import bench_discovery

    unet, tokens = _unet(preset, device, dtype, threads)
    result = bench_discovery(unet, tokens=tokens, batch=batch, repeats=repeats, profile=profile, lora_rank=lora_rank)
    emit({"preset": preset, "threads": threads, **result}, as_json=as_json, title="cones bench discovery")


@app.command("generate")
def generate(
    preset: Preset = "toy",
    combinations: Annotated[int, typer.Option(min=1, help="B: subject combinations in the batch")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="denoising steps per image")] = 2,
    density: Annotated[float, typer.Option(min=0.0, max=1.0, help="fraction of neurons each random mask shuts")] = 0.01,
    repeats: Repeats = 5,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    threads: Threads = 1,
    composition: Annotated[
        str, typer.Option(help="also time two-subject images composed this way (union or token) against union: ratio_to_union")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Images/s: per-sample masked batch (Cones attention processor, concepts in cross_attention_kwargs) vs unmasked batch
    vs one at a time; target masked ≥ 0.9 × unmasked."""
    from cones_lab.benchmarks import bench_generate

    if composition is not None and composition not in ("union", "token"):
        raise typer.BadParameter(f"unknown composition {composition!r}; use union or token", param_hint="--composition")
    unet, tokens = _unet(preset, device, dtype, threads)
    result = bench_generate(unet, tokens=tokens, combinations=combinations, steps=steps, density=density, repeats=repeats,
                            composition=composition)
    emit({"preset": preset, "threads": threads, **result}, as_json=as_json, title="cones bench generate")
