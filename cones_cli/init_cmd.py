"""`cones init`: a `customize` config from a folder of subject folders, the way users keep their photos
(one folder per subject), so `cones run customize --config run.yaml` runs as written."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cones_cli.output import console

app = typer.Typer(add_completion=False)  # `cones init`, at the top of `cones` (cones_cli/app.py)


class InitError(ValueError):
    """A subjects folder that cannot become a config; the message says what to change."""


def _class_words(pairs: list[str]) -> dict[str, str]:
    words = {}
    for pair in pairs:
        subject, sep, word = pair.partition("=")
        if not sep or not subject.strip() or not word.strip():
            raise InitError(f"--class-word takes SUBJECT=WORD (e.g. my-dog=dog), got {pair!r}")
        words[subject.strip()] = word.strip()
    return words


def _local(path: str) -> str:
    """An absolute path for a local folder (the config then works from any directory); URIs as given."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def scaffold_customize(
    subjects_dir: Path,
    *,
    model: str,
    catalog: str,
    clip: tuple[str, str] | None = None,
    class_words: dict[str, str] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """The `customize` config for every sub-folder of `subjects_dir`, validated by CustomizeConfig.

    Each sub-folder is one subject; its name is the subject id. The class word comes from
    `class_words[id]`, else from the folder's `class_word` file (catalog.sources.CLASS_WORD_FILE,
    which ingest skips), else the subject is refused: Cones conditions discovery on the class prompt
    ("a dog"), and no folder name says reliably which class a subject is.
    """
    from pydantic import ValidationError

    from catalog.sources import CLASS_WORD_FILE
    from cones_tasks.config import CustomizeConfig
    from cones_tasks.ingest import InvalidSubjectIdError, validate_subject_id

    if not subjects_dir.is_dir():
        raise InitError(f"--subjects {subjects_dir} is not a folder")
    folders = sorted(p for p in subjects_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InitError(f"{subjects_dir} has no sub-folders: put each subject's photos in a folder of its own, named after it")
    class_words = dict(class_words or {})
    unknown = sorted(set(class_words) - {p.name for p in folders})
    if unknown:
        raise InitError(f"--class-word names {unknown}, which are not sub-folders of {subjects_dir}")
    subjects, problems = [], []
    for folder in folders:
        try:
            subject_id = validate_subject_id(folder.name)
        except InvalidSubjectIdError as exc:
            problems.append(f"{folder.name}: {exc} (rename the folder)")
            continue
        word = class_words.get(folder.name)
        if word is None and (folder / CLASS_WORD_FILE).is_file():
            word = (folder / CLASS_WORD_FILE).read_text().strip()
        if not word:
            problems.append(
                f"{folder.name}: no class word; write it into {folder / CLASS_WORD_FILE} (e.g. `echo dog > "
                f"{folder / CLASS_WORD_FILE}`) or pass --class-word {folder.name}=dog"
            )
            continue
        subjects.append({"subject_id": subject_id, "class_word": word, "uri": str(folder.resolve())})
    if problems:
        raise InitError("\n".join(problems))
    config: dict[str, Any] = {
        "catalog": _local(catalog),
        "model": {"path": _local(model), "device": device, "dtype": dtype},
        "subjects": subjects,
    }
    if clip is not None:
        config["scoring"] = {"clip": {"model_name": clip[0], "weights_path": _local(clip[1]), "device": device}}
    try:
        CustomizeConfig.model_validate(config)
    except ValidationError as exc:
        raise InitError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc
    return config


@app.command("init")
def init(
    subjects: Annotated[Path, typer.Option("--subjects", help="A folder with one sub-folder of photos per subject.")],
    model: Annotated[str, typer.Option("--model", help="The diffusion model folder (diffusers layout, e.g. stable-diffusion-v1-5).")],
    clip: Annotated[
        tuple[str, str] | None,
        typer.Option("--clip", help="An open_clip model name and its local weights, e.g. --clip ViT-L-14 vit_l14.safetensors; "
                     "without it the run is not scored."),
    ] = None,
    class_word: Annotated[
        list[str] | None,
        typer.Option("--class-word", help="SUBJECT=WORD, repeatable; overrides the subject folder's `class_word` file."),
    ] = None,
    catalog: Annotated[str, typer.Option("--catalog", help="Catalog folder or URI the run writes to.")] = "cones-catalog",
    device: Annotated[str, typer.Option("--device", help="torch device for the model and CLIP: cpu, cuda, mps.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, or float16 / bfloat16 on a GPU.")] = "float32",
    out: Annotated[Path, typer.Option("--out", help="Config file to write.")] = Path("run.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Write a `customize` config (run.yaml): one subject per sub-folder of --subjects, ready for
    `cones run customize --config run.yaml`. Every other knob keeps its default (docs/config.md)."""
    import yaml

    if out.exists() and not force:
        console.print(f"[red]error:[/red] {out} exists; pass --force to overwrite it")
        raise typer.Exit(2)
    try:
        config = scaffold_customize(
            subjects, model=model, catalog=catalog, clip=tuple(clip) if clip else None,
            class_words=_class_words(class_word or []), device=device, dtype=dtype,
        )
    except InitError as exc:
        console.print("[red]error:[/red]", soft_wrap=True)
        console.print(str(exc), soft_wrap=True, markup=False)
        raise typer.Exit(2) from exc
    header = (
        f"# cones run customize --config {out}\n"
        "# Written by `cones init`; every other key keeps its default: `cones config example customize`, docs/config.md.\n"
    )
    out.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    console.print(f"Wrote {out}: {len(config['subjects'])} subjects. Next: cones run customize --config {out}", soft_wrap=True)
    # The config is written anyway (the model may be downloaded next), but `cones run` would refuse it as it stands.
    for problem in _model_problems(config):
        console.print(f"warning: {problem}", soft_wrap=True, markup=False, highlight=False)


def _model_problems(config: dict[str, Any]) -> list[str]:
    """What `cones run`'s pre-flight would refuse in the config's model folder and CLIP weights (cones_cli/preflight.py)."""
    from cones_tasks.model_files import clip_weights_problem, model_folder_problems

    problems = [f"--model: {p}" for p in model_folder_problems(config["model"]["path"])]
    clip = (config.get("scoring") or {}).get("clip")
    if clip and (problem := clip_weights_problem(clip["weights_path"])) is not None:
        problems.append(f"--clip: {problem}")
    return problems
