"""`cones toy validate`: the paper's claims measured on the toy world, per composition strategy.

A command of the lab (cones_lab), in the `cones toy` group beside the toy world's own (cones_cli/app.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from cones_cli.output import emit
from cones_cli.toy import JSON, toy_asset

app = typer.Typer(add_completion=False)  # in the `cones toy` group (cones_cli/app.py)


@app.command("validate")
def validate(
    model: Path = typer.Option(None, help="Diffusers folder (default: the shipped toy model)."),
    subjects: int = typer.Option(6, min=2, help="How many of the named toy subjects (first N)."),
    quick: bool = typer.Option(
        False, "--quick", help="The recommended setting only (token, word-scoped fit, 12 scene photos per subject; no "
        "selection), 48 images per line, multi 2, 3 and 4 beside their spelled-out ceilings; prints {strategy, single, "
        "context, crosstalk, multi, ceilings}."
    ),
    strategy: list[str] = typer.Option(
        None, help="Composition strategies to report: union (the paper's) and/or token. Default: both; --quick: token."
    ),
    n: int = typer.Option(100, min=1, help="Images judged per reported line."),
    select_n: int = typer.Option(48, min=1, help="Images per candidate when choosing hyper-parameters."),
    steps: int = typer.Option(25, min=1, help="Sampling steps per image."),
    guidance: float = 3.0,
    candidates: Path = typer.Option(
        None, help="JSON list of discovery objectives ({\"objective\": \"fit\", ...}, docs/config.md) to choose from "
        "(default: the built-in sweep; with --quick, they replace the recommended setting)."
    ),
    union_refine: str = typer.Option(
        None, help="PromptScoreObjective JSON: also report multi_refined, each union after these joint rounds "
        "(e.g. '{\"rounds\": 3, \"steps\": 8, \"threshold_value\": 0.005}')."
    ),
    prompts: list[str] = typer.Option(
        ["context"], help="Discovery's conditioning, each tried with every candidate: 'class' ('a triangle', the paper's) "
        "and/or 'context' ('a triangle on snow', each reference's background). Repeat to try both."
    ),
    scene_references: int = typer.Option(
        None, min=0, help="Token strategy: also hand discovery N captioned renders of each subject beside another object "
        "(scene photos, docs/composition.md). Default: 12 with --quick (the recommended setting), else 0."
    ),
    scene_objects: str = typer.Option(
        "2", help="Objects in each scene photo, cycled: '2' (the subject and one other), or e.g. '2,3,4' to name the "
        "subject at every place of two-, three- and four-object captions."
    ),
    combination: str = typer.Option(
        None, help="Token strategy: a combination step per pair before pairs are judged (CombinationParams JSON, e.g. "
        "'{\"steps\": 100}'; docs/research/pairs.md); its masks are used for that pair only."
    ),
    layout: str = typer.Option(
        "default", help="Attention control for multi-subject images: 'default' (the pipeline's, GenerationGrid.layout), "
        "'none' (off), or a Layout as JSON, e.g. '{\"inside\": 2, \"outside\": 4}' (docs/research/layout.md)."
    ),
    combination_pictures: str = typer.Option(
        "composite", help="The step's pictures of a pair: composite (halves of the subjects' scene photos), self "
        "(sampled, judged, kept) or together (rendered together: photos of the two together)."
    ),
    as_json: bool = JSON,
) -> None:
    """Discovery on ≥ 2 toy subjects, judged: single (masked vs not), context, cross-talk, unions, bytes."""
    from cones_tasks.loading import load_diffusion_model
    from cones_lab.validate import DEFAULT_CANDIDATES, ValidateParams, validate_toy
    from cones_tasks.neurons.composition import COMPOSITIONS
    from cones_tasks.neurons.objectives import DISCOVERY_FOR, PromptScoreObjective, parse_discovery
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS

    if subjects > len(TOY_SUBJECTS):
        raise typer.BadParameter(f"there are {len(TOY_SUBJECTS)} toy subjects", param_hint="--subjects")
    if unknown := sorted(set(prompts) - {"class", "context"}):
        raise typer.BadParameter(f"unknown prompt mode(s) {unknown}; use class and/or context", param_hint="--prompts")
    strategies = tuple(strategy or (["token"] if quick else COMPOSITIONS))
    if unknown := sorted(set(strategies) - set(COMPOSITIONS)):
        raise typer.BadParameter(f"unknown strategy {unknown}; use {' and/or '.join(COMPOSITIONS)}", param_hint="--strategy")
    sweep = DEFAULT_CANDIDATES
    if candidates is not None:
        sweep = tuple(parse_discovery(c) for c in json.loads(candidates.read_text()))
    refine = PromptScoreObjective.model_validate_json(union_refine) if union_refine else None
    from typing import get_args

    from cones_lab.pair_pictures import PairSource
    from cones_tasks.neurons.combination import CombinationParams

    if combination_pictures not in get_args(PairSource):
        raise typer.BadParameter(f"unknown pictures {combination_pictures!r}; use {', '.join(get_args(PairSource))}",
                                 param_hint="--combination-pictures")
    joint = CombinationParams.model_validate_json(combination) if combination else None
    params = ValidateParams(images_per_line=n, select_images_per_line=select_n, sample_steps=steps, guidance_scale=guidance,
                            union_refine=refine, prompt_modes=tuple(prompts), strategies=strategies,
                            combination=joint, combination_pictures=combination_pictures,
                            scene_references=scene_references if scene_references is not None else (12 if quick else 0),
                            scene_objects=_counts(scene_objects), layout=_layout(layout))
    if quick:
        # the recommended setting, unless the caller names its own (a shorter discovery for a smoke run)
        sweep = sweep if candidates is not None else tuple(DISCOVERY_FOR[s] for s in strategies)
        params = params.model_copy(update={
            "images_per_line": 48 if n == 100 else n, "sample_steps": 20 if steps == 25 else steps, "multi_sizes": (2, 3, 4),
            "prompt_modes": ("context",),
        })
    start = time.perf_counter()
    result = validate_toy(load_diffusion_model(toy_asset(model, "TOY_MODEL_DIR")), TOY_SUBJECTS[:subjects], judge,
                          candidates=sweep, params=params, progress=not as_json)
    result["wall_s"] = time.perf_counter() - start
    if quick:  # the recommended strategy's lines first, flat, then the rest
        first = strategies[0]
        result = {"strategy": first, **result["strategies"][first], "scene_references": params.scene_references,
                  "scene_objects": list(params.scene_objects),
                  "layout": params.layout.model_dump(mode="json") if params.layout is not None else None,
                  "ceilings": result.get("ceilings"), "wall_s": result["wall_s"], "details": result}
    emit(result, as_json=as_json, title="toy validate")


def _layout(text: str):
    """--layout: 'default', 'none' or a Layout's JSON."""
    from pydantic import ValidationError

    from cones_tasks.neurons.layout import Layout

    if text == "default":
        return Layout()
    if text == "none":
        return None
    try:
        return Layout.model_validate_json(text)
    except ValidationError as e:
        raise typer.BadParameter(f"{text!r} is not a layout ({e.errors()[0]['msg']}); give 'default', 'none' or JSON such as "
                                 "'{\"inside\": 2, \"outside\": 4}'", param_hint="--layout") from None


def _counts(text: str) -> tuple[int, ...]:
    """'2,3,4' -> (2, 3, 4): the --scene-objects list, each 2 to 4 (toyworld.subjects.check_scene_objects)."""
    from cones_tasks.toyworld.subjects import check_scene_objects

    try:
        counts = tuple(int(part) for part in text.split(","))
        check_scene_objects(counts)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a list of object counts from 2 to 4 (e.g. '2' or '2,3,4')",
                                 param_hint="--scene-objects") from None
    return counts
