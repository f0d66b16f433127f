"""`cones run <flow> --config file.json`, `cones export`, `cones demo` (docs/pipeline.md). Heavy imports inside commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from cones_cli.output import console, emit

app = typer.Typer(add_completion=False)  # its commands sit at the top of `cones` (cones_cli/app.py)
run_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(run_app, name="run", help="Run a pipeline flow with a JSON (or YAML) config file.")

# flow command → (module, flow function, config class)
FLOWS = {
    "customize": ("flows.customize", "customize", "CustomizeConfig"),
    "ingest": ("flows.ingest_subjects", "ingest_subjects", "IngestConfig"),
    "discover": ("flows.discover_concepts", "discover_concepts", "DiscoverConfig"),
    "generate": ("flows.generate_combinations", "generate_combinations", "GenerateConfig"),
    "score": ("flows.score_generations", "score_generations", "ScoreConfig"),
    "compact": ("flows.compact_catalog", "compact_catalog", "CompactConfig"),
}
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="JSON or YAML file with the flow's config.", exists=True, dir_okay=False)]
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
TRUST_PICKLE = typer.Option(
    False, "--trust-pickle",
    help="Let the config's model and CLIP load pickle weights (.bin, .ckpt, .pt), which can run code: only for sources you trust.",
)


def load_config(path: Path, config_class: str):
    """Parse and validate a config file; a bad field is named with its location and the run refused."""
    from pydantic import ValidationError

    import cones_tasks.config as configs

    import yaml

    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        console.print(f"[red]error:[/red] {path} is not valid JSON/YAML: {exc}", soft_wrap=True)
        raise typer.Exit(2) from exc
    try:
        return getattr(configs, config_class).model_validate(data)
    except ValidationError as exc:
        console.print(f"[red]error:[/red] {path} does not fit {config_class}:", soft_wrap=True)
        for err in exc.errors():
            console.print(f"  {'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc


def _quiet_prefect() -> None:
    """An offline machine: no telemetry calls from a temporary Prefect server (they only log errors)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def refuse_on_preflight_problems(config) -> None:
    """Exit 2 with one line per problem found before any flow starts (cones_cli.preflight)."""
    from cones_cli.preflight import preflight_problems

    if problems := preflight_problems(config):
        for problem in problems:
            console.print(f"error: {problem}", soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(2)


def exit_failed(log, exc: BaseException):
    """A run that failed: one line per failed task (or its own error), where the full log is; exit 1."""
    for line in log.failure_lines(exc):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(1) from None


def _register(command: str) -> None:
    module, function, config_class = FLOWS[command]

    def run(config: ConfigOpt, trust_pickle: bool = TRUST_PICKLE, as_json: bool = JSON) -> None:
        import importlib

        from cones_cli.run_log import run_log
        from flows._api_server import temporary_api_server

        _quiet_prefect()
        cfg = load_config(config, config_class)
        if trust_pickle:
            from cones_tasks.config import with_trusted_pickle

            cfg = with_trusted_pickle(cfg)
        refuse_on_preflight_problems(cfg)
        flow_fn = getattr(importlib.import_module(module), function)
        with run_log(command) as log:
            try:
                with temporary_api_server():  # no PREFECT_API_URL: a server that dies with this process, even on SIGKILL
                    result = flow_fn(cfg)
            except Exception as exc:  # noqa: BLE001 — every failure: one line per failed task, the log has the rest
                exit_failed(log, exc)
        emit(result, as_json=as_json, title=command)

    run.__doc__ = f"Run the `{function.replace('_', '-')}` flow with the {config_class} in --config."
    run_app.command(command)(run)


for _command in FLOWS:
    _register(_command)


@app.command("export")
def export(
    where: Annotated[str, typer.Option("--where", help="One boolean SQL expression over each generation's columns and score metrics, e.g. \"presence = 1 AND len(subjects) = 2\"; parsed by DuckDB as an expression, under the catalog's SQL sandbox.")],
    to: Annotated[str, typer.Option("--to", help="Target folder or fsspec URI.")],
    catalog: Annotated[str, typer.Option("--catalog", envvar="CONES_CATALOG", help="Catalog URI.")] = "",
    include_bytes: Annotated[bool, typer.Option("--include-bytes", help="Also put the PNG bytes in the Parquet file.")] = False,
    format: Annotated[str, typer.Option(
        "--format", "-f",
        help="parquet: generations.parquet + images/ (DuckDB, pandas); imagefolder: metadata.jsonl + images/ "
        "(Hugging Face datasets' imagefolder); webdataset: tar shards of <id>.png + <id>.json.",
    )] = "parquet",
    shard_mb: Annotated[float, typer.Option("--shard-mb", min=0.02, help="webdataset: the most megabytes (10^6 B) per shard.")] = 256.0,
    as_json: bool = JSON,
) -> None:
    """Export generated images, prompts, subjects and scores as a dataset: Parquet, imagefolder or WebDataset."""
    from catalog import CatalogError, QueryError, load_catalog
    from catalog.dataset import FORMATS, export_dataset

    if not catalog:
        raise typer.BadParameter("pass --catalog or set CONES_CATALOG", param_hint="--catalog")
    if format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}", param_hint="--format")
    if include_bytes and format != "parquet":
        raise typer.BadParameter(f"--include-bytes is for --format parquet; {format} holds the images themselves",
                                 param_hint="--include-bytes")
    try:
        result = export_dataset(load_catalog(catalog), where=where, to=to, include_bytes=include_bytes, format=format,
                                shard_bytes=int(shard_mb * 1e6))
    except QueryError as exc:  # DuckDB could not parse or bind the predicate: its words, no traceback
        console.print(f"error in --where: {exc}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc
    except (CatalogError, ValueError) as exc:
        console.print(f"error: {exc}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc
    except OSError as exc:  # the destination: not writable, not a folder, disk full
        console.print(f"error writing --to {to}: {exc}", soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc
    emit(result, as_json=as_json, title="export")


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option(help="Where subjects, catalog and report go.")] = Path("demo-out"),
    subjects: Annotated[int, typer.Option(min=4, max=6, help="How many toy subjects (4–6).")] = 4,
    as_json: bool = JSON,
) -> None:
    """Run `customize` end to end on toy subjects: ingest PNG folders, discover, generate every 1–4-subject
    combination × 2 prompts × 8 seeds, score, write the HTML report."""
    from cones_cli.run_log import run_log
    from flows._api_server import temporary_api_server

    _quiet_prefect()
    started = time.perf_counter()
    workdir = workdir.resolve()
    with run_log("demo", folder=workdir / "logs") as log:
        try:
            with temporary_api_server():
                result = _run_demo(workdir, n_subjects=subjects)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 — as `cones run`: one line per failed task, the log has the rest
            exit_failed(log, exc)
    result["log"] = str(log.path)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if as_json:
        emit(result, as_json=True)
        return
    console.print(f"\n[bold]Report:[/bold] {result['report_path']}")
    console.print(f"Generated {result['generations']} images for {len(result['subjects'])} subjects in {result['wall_s']} s.")
    shown = ", ".join(f"{k} subject{'s' if k != '1' else ''} {v:.2f}" for k, v in result["all_present"].items())
    console.print(f"All subjects present (toy judge), by subjects per image: {shown}")
    console.print("Try:")
    console.print(f"  cones sql --catalog {result['catalog']} \"{result['query']}\"")


# What a combination is for: every subject in the image (cones_tasks.generation_scores.all_present).
ALL_PRESENT_BY_K = (
    "SELECT len(g.subjects) AS k, avg(s.value) AS all_present FROM generations g JOIN clip_scores s "
    "ON s.generation = g.id WHERE s.metric = 'all_present' GROUP BY ALL ORDER BY k"
)

DEMO_QUERY = (
    "SELECT array_to_string(g.subjects, ' + ') AS subjects, g.prompt, round(avg(s.value), 3) AS presence "
    "FROM generations g JOIN clip_scores s ON s.generation = g.id WHERE s.metric = 'presence' "
    "GROUP BY ALL ORDER BY presence DESC, subjects LIMIT 10"
)


def _run_demo(workdir: Path, *, n_subjects: int, overrides: dict | None = None) -> dict:
    """The demo's `customize` config over the shipped toy model (and toy CLIP when it is there).

    overrides: config parts merged over the demo's, one level deep ({"grid": {"seeds": [0]}}): a smaller run of
    the same pipeline, for its fast test."""
    from catalog import load_catalog
    from cones_tasks.config import CustomizeConfig
    from cones_tasks.toyworld.assets import TOY_MODEL_DIR, toy_clip_weights
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS, write_subject_folders
    from cones_tasks.toyworld.train_clip import TOY_CLIP_NAME
    from flows.customize import customize

    if not (TOY_MODEL_DIR / "unet").is_dir():
        console.print(f"[red]error:[/red] the toy model is missing from {TOY_MODEL_DIR}; train it with `cones toy train-model`")
        raise typer.Exit(2)
    clip = toy_clip_weights()
    if not clip.is_file():
        console.print(f"[yellow]note:[/yellow] no toy CLIP at {clip} (`cones toy train-clip`); scoring with the judge only")
    chosen = TOY_SUBJECTS[:n_subjects]
    # Six photos of each subject alone and twelve captioned photos of it beside another object: discovery
    # learns from the latter to keep each subject at its own object (docs/research/composition.md).
    folders = write_subject_folders(workdir / "subjects", chosen, scenes=12)
    demo = {
        "catalog": str(workdir / "catalog"),
        "model": {"path": str(TOY_MODEL_DIR)},
        "subjects": [{"subject_id": s.id, "class_word": s.class_word, "uri": str(folders[s.id])} for s in chosen],
        "ingest": {"min_side": 16},  # toy renders are 16 px
        # The default 1 % gate, at a quarter of its image draws (400 steps of 3 images, not 800 of 6): the default's
        # discovery takes ~2 min a subject on 2 cores (9 for the demo's four), and the demo has 5 minutes for everything.
        "discovery": {"objective": "gate", "density": 0.01, "rounds": 20, "batch_size": 3},
        # 15 solver steps: the toy model's images settle by then (20 moved pairs by +0.02). Eight seeds: the
        # images of one seed share their starting noise, so the report's rates vary with the seed far more
        # than with the combination (a pair rate of 0.17 on seeds 0–2 and 0.58–0.75 on seeds 6–7 with the
        # same masks; docs/research/composition.md); 240 images at 15 steps cost seconds next to discovery.
        # Guidance 3, as in eval-model and validate (6 drew worse shapes; docs/research/toy-model.md).
        # Up to four subjects: the shipped toy model draws four spelled-out objects (docs/research/toy-model.md).
        "grid": {"max_k": 4, "templates": ["{subjects}", "{subjects} on night"], "seeds": list(range(8)),
                 "steps": 15, "guidance_scale": 3.0, "sample_batch": 56},
        "scoring": {
            "judge": True,
            "clip": {"model_name": TOY_CLIP_NAME, "weights_path": str(clip)} if clip.is_file() else None,
        },
    }
    for part, values in (overrides or {}).items():
        demo[part] = {**demo.get(part, {}), **values} if isinstance(values, dict) else values
    config = CustomizeConfig.model_validate(demo)
    result = customize(config)
    # The catalog keeps the report content-addressed; a stable name next to it is easier to open.
    report = workdir / "report.html"
    report.write_bytes(Path(result["report_uri"].removeprefix("file://")).read_bytes())
    by_k = load_catalog(config.catalog).query(ALL_PRESENT_BY_K).to_pylist()
    return {
        "subjects": result["subjects"],
        "generations": result["generations"],
        "all_present": {str(r["k"]): round(r["all_present"], 3) for r in by_k},
        "catalog": config.catalog,
        "report_uri": result["report_uri"],
        "report_path": str(report),
        "query": DEMO_QUERY,
    }
