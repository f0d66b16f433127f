"""`cones toy compare`: Cones against dense K/V fine-tuning and LoRA on the toy world (docs/baselines.md).

A command of the lab (cones_lab), in the `cones toy` group beside the toy world's own (cones_cli/app.py).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

from cones_cli.output import emit
from cones_cli.toy import JSON, toy_asset

app = typer.Typer(add_completion=False)  # in the `cones toy` group (cones_cli/app.py)


@app.command("compare")
def compare(
    model: Path = typer.Option(None, help="Diffusers folder (default: the shipped toy model)."),
    subjects: int = typer.Option(6, min=2, help="How many of the named toy subjects (first N)."),
    quick: bool = typer.Option(
        False, "--quick", help="One budget per baseline (no selection run), 24 images per line and 12 per selection "
        "line (the multi-subject mode is still chosen on the selection seeds)."
    ),
    n: int = typer.Option(None, min=1, help="Images judged per reported line (default 48; --quick 24)."),
    select_n: int = typer.Option(None, min=1, help="Images per selection line (default 24; --quick 12)."),
    steps: int = typer.Option(20, min=1, help="Sampling steps per image."),
    method: list[str] = typer.Option(None, help="Rows to measure: cones, dense_kv, lora (repeat; default all three)."),
    multi_mode: list[str] = typer.Option(
        None, help="Baselines' multi-subject modes to choose from: summed, joint (repeat; default both)."
    ),
    budget: int = typer.Option(
        None, min=0, help="--quick: which of each baseline's default budgets to take (0: the smallest, the default)."
    ),
    out: Path = typer.Option(None, help="Folder to write every concept into (default: a temporary folder)."),
    markdown: Path = typer.Option(None, help="Also write the table as markdown to this file."),
    threads: int = typer.Option(1, min=0, help="torch CPU threads (0: torch's default); seconds per concept are measured under it."),
    as_json: bool = JSON,
) -> None:
    """One table, a row per method (cones, dense_kv, lora): single hit, context, crosstalk, multi 2, bytes, CPU seconds."""
    import torch

    from cones_lab.compare import CompareParams, compare_toy, markdown_table
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS

    if subjects > len(TOY_SUBJECTS):
        raise typer.BadParameter(f"there are {len(TOY_SUBJECTS)} toy subjects", param_hint="--subjects")
    if threads:
        torch.set_num_threads(threads)
    defaults = CompareParams()
    sampling = defaults.sampling.model_copy(update={
        "images_per_line": n or (24 if quick else 48), "select_images_per_line": select_n or (12 if quick else 24),
        "sample_steps": steps,
    })
    params = CompareParams(**{**defaults.model_dump(), "sampling": sampling.model_dump(),
                              **({"methods": tuple(method)} if method else {}),
                              **({"multi_modes": tuple(multi_mode)} if multi_mode else {})})
    if quick:
        pick = budget or 0
        if pick >= min(len(defaults.dense_kv), len(defaults.lora)):
            raise typer.BadParameter(f"there are {len(defaults.dense_kv)} default budgets", param_hint="--budget")
        params = params.model_copy(update={"dense_kv": defaults.dense_kv[pick : pick + 1], "lora": defaults.lora[pick : pick + 1]})
    with tempfile.TemporaryDirectory(prefix="cones-compare-") as scratch:
        root = out or Path(scratch)

        def store(key: str, blob: bytes) -> int:
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            return path.stat().st_size  # what the file system holds, not len(blob)

        start = time.perf_counter()
        result = compare_toy(load_diffusion_model(toy_asset(model, "TOY_MODEL_DIR")), TOY_SUBJECTS[:subjects], judge,
                             store=store, params=params, progress=not as_json)
        result["wall_s"] = time.perf_counter() - start
        result["quick"] = quick
    if markdown is not None:
        markdown.write_text(markdown_table(result))
    emit(result if as_json else {"rows": result["rows"], "wall_s": result["wall_s"]}, as_json=as_json, title="toy compare")
