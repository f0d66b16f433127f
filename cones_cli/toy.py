"""`cones toy …`: the embedded toy world (docs/research/toy-model.md). The lab's toy commands (validate,
compare) are cones_cli/toy_validate.py and toy_compare.py; cones_cli/app.py puts them in the same group."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cones_cli.output import console, emit

app = typer.Typer(no_args_is_help=True, add_completion=False)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def toy_asset(path: Path | None, attr: str) -> Path:
    """`path`, or the shipped toy asset `attr` of cones_tasks.toyworld.assets (TOY_MODEL_DIR, TOY_CLIP_DIR)."""
    from cones_tasks.toyworld import assets

    return path or getattr(assets, attr)


@app.command("assets")
def assets(name: str = typer.Argument(None, help="toy-model or toy-clip: print that folder alone (for $(...) in a shell).")) -> None:
    """Where the shipped toy model and toy CLIP are (package data of cones_tasks; a wheel installs them too)."""
    from cones_tasks.toyworld import assets as shipped

    folders = {"toy-model": shipped.TOY_MODEL_DIR, "toy-clip": shipped.TOY_CLIP_DIR}
    if name is not None and name not in folders:
        console.print(f"[red]error:[/red] no asset {name!r}; choose one of {', '.join(folders)}")
        raise typer.Exit(2)
    for key, folder in folders.items():
        if name is None:
            print(f"{key}\t{folder}")
        elif key == name:
            print(folder)


@app.command("render-subjects")
def render_subjects(out: Path = typer.Argument(..., help="Folder to write one PNG folder per toy subject into."),
                    n: int = typer.Option(6, help="Reference renders per subject (5–8 is what a user hands over)."),
                    seed: int = 0) -> None:
    """Write the named toy subjects' reference renders as PNG folders."""
    from cones_tasks.toyworld.subjects import write_subject_folders

    for subject_id, folder in write_subject_folders(out, n=n, seed=seed).items():
        console.print(f"{subject_id}: {folder}")


@app.command("eval-judge")
def eval_judge(n: int = typer.Option(1000, help="Scenes per line."), seed: int = 1,
               crowd_radius: str = typer.Option("3.0,3.5", help="Half-size range (px) of three or four objects; the two-object 8,750-step model's: 2.6,3.2."),
               as_json: bool = JSON) -> None:
    """Accuracy of the judge on fresh renders of 1, 2, 3 and 4 objects (`counts`; `single`, `pair`: 1 and 2)."""
    from cones_tasks.toyworld.evaluate import eval_judge as run
    from cones_tasks.toyworld.render import check_crowd_radius
    from cones_tasks.toyworld.train_model import parse_crowd_radius

    try:
        radius = parse_crowd_radius(crowd_radius)
        check_crowd_radius(radius)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    emit(run(n=n, seed=seed, crowd_radius=radius), as_json=as_json, title="judge")


@app.command("train-clip")
def train_clip(out: Path = typer.Option(None, help="Output folder (default: the shipped toy CLIP, `cones toy assets toy-clip`)."),
               steps: int = 1500, seed: int = 0, as_json: bool = JSON) -> None:
    """Train the toy CLIP from scratch (seeded); records the wall time."""
    from cones_tasks.toyworld.train_clip import TrainClipParams, train_toy_clip

    log = train_toy_clip(toy_asset(out, "TOY_CLIP_DIR"), TrainClipParams(steps=steps, seed=seed))
    emit({"wall_s": log["wall_s"], "final_loss": log["final_loss"], "steps": steps}, as_json=as_json, title="toy clip")


@app.command("eval-clip")
def eval_clip(weights: Path = typer.Option(None, help="Toy CLIP weights (default: the shipped ones)."),
              n: int = 500, seed: int = 1, as_json: bool = JSON) -> None:
    """Zero-shot accuracy of the toy CLIP per attribute on fresh renders."""
    from cones_tasks.loading import load_clip_scorer
    from cones_tasks.toyworld.assets import toy_clip_weights
    from cones_tasks.toyworld.evaluate import eval_clip as run
    from cones_tasks.toyworld.train_clip import TOY_CLIP_NAME

    scorer = load_clip_scorer(TOY_CLIP_NAME, weights or toy_clip_weights())
    emit(run(scorer, n=n, seed=seed), as_json=as_json, title="toy clip zero-shot")


@app.command("train-model")
def train_model(out: Path = typer.Option(None, help="Output folder (default: the shipped toy model, `cones toy assets toy-model`)."),
                steps: int = 2000, seed: int = 0, max_minutes: float = typer.Option(None, help="Stop (and ship) after this long."),
                resume: bool = typer.Option(False, help="Continue a run stopped by --max-minutes from its shipped weights."),
                stop_at: int = typer.Option(None, help="Stop (and ship) at this step: replays a segment of a logged run."),
                batch_size: int = 64, lr: float = 2e-3,
                text_encoder: str = typer.Option("random", help="Frozen text encoder: 'random' or 'toy-clip' (the toy CLIP's text tower)."),
                device: str = typer.Option("cpu", help="Torch device to train on, e.g. cuda."),
                workers: int = typer.Option(0, help="DataLoader processes rendering batches (0: render in this process)."),
                data_stream: str = typer.Option("per-step", help="'per-step' (any --workers) or 'sequential' (the first model's; --workers 0)."),
                object_counts: str = typer.Option(None, help="Scene mix by object count, count:weight, e.g. 1:0.2,2:0.3,3:0.25,4:0.25 (or JSON {\"1\": 0.2, ...})."),
                object_order: str = typer.Option("random", help="'random' cells; 'reading': captions name objects left/top first; 'left-to-right': reading, pairs always side by side."),
                crowd_radius: str = typer.Option("3.0,3.5", help="Half-size range (px) of three or four objects; the two-object 8,750-step model's: 2.6,3.2."),
                as_json: bool = JSON) -> None:
    """Train the toy text-to-image model from scratch (seeded); progress bar, loss-curve PNG, wall time."""
    from cones_tasks.toyworld.train_model import TrainModelParams, parse_crowd_radius, parse_object_counts, train_toy_model

    try:
        params = TrainModelParams(steps=steps, seed=seed, max_minutes=max_minutes, resume=resume, stop_at=stop_at, batch_size=batch_size,
                                  lr=lr, text_encoder=text_encoder, device=device, workers=workers, data_stream=data_stream,
                                  object_order=object_order, object_counts=parse_object_counts(object_counts) if object_counts else None,
                                  crowd_radius=parse_crowd_radius(crowd_radius))
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    log = train_toy_model(toy_asset(out, "TOY_MODEL_DIR"), params)
    emit({k: log[k] for k in ("steps_done", "wall_s", "final_loss_ema50", "caption_gap")}, as_json=as_json, title="toy model")


@app.command("probe-text")
def probe_text(model: Path = typer.Option(None, help="Diffusers folder whose text_encoder/ to probe (default: the shipped toy model)."),
               toy_clip: bool = typer.Option(False, "--toy-clip", help="Probe the toy CLIP's text tower instead (train-model --text-encoder toy-clip)."),
               as_json: bool = JSON) -> None:
    """Does the frozen text encoder bind colours to shapes? Linear-probe accuracy per shape token (chance 0.25)."""
    from cones_tasks.toyworld.text_probe import probe_binding

    if toy_clip:
        from cones_tasks.toyworld.assets import toy_clip_weights
        from cones_tasks.toyworld.clip_text_encoder import text_encoder_from_toy_clip

        encoder = text_encoder_from_toy_clip(toy_clip_weights())
    else:
        from cones_tasks.loading import load_diffusion_model

        encoder = load_diffusion_model(toy_asset(model, "TOY_MODEL_DIR")).text_encoder
    emit(probe_binding(encoder), as_json=as_json, title="text-encoder binding probe")


@app.command("eval-model")
def eval_model(model: Path = typer.Option(None, help="Diffusers folder (default: the shipped toy model)."),
               n: int = typer.Option(200, help="Images per line."), seed: int = 1, steps: int = 25,
               guidance: float = 3.0, device: str = typer.Option("cpu", help="Torch device to sample on, e.g. cuda."),
               lines: str = typer.Option("single,class_only,pair,counts", help="Which lines to sample (each keeps its full-run images), e.g. counts."),
               as_json: bool = JSON) -> None:
    """Judge the toy model's samples: full prompts, class-only prompts, two-object prompts, and `counts`: full
    captions of 1–4 objects, the share of images with every object right (--n per count)."""
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.evaluate import check_eval_lines, eval_model as run

    chosen = tuple(x.strip() for x in lines.split(",") if x.strip())
    try:
        check_eval_lines(chosen)  # before the model loads
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2)
    start = time.perf_counter()
    result = run(load_diffusion_model(toy_asset(model, "TOY_MODEL_DIR"), device=device), n=n, seed=seed, steps=steps,
                 guidance_scale=guidance, progress=not as_json, lines=chosen)
    result["wall_s"] = time.perf_counter() - start
    emit(result, as_json=as_json, title="toy model")

