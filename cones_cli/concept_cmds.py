"""`cones concept export`: a subject's concept as a file for load_concept in your own pipeline (README)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cones_cli.catalog_cmds import CatalogOpt, _open
from cones_cli.output import console, emit

app = typer.Typer(add_completion=False)  # composed into `cones` by cones_cli/app.py
concept_app = typer.Typer(no_args_is_help=True, add_completion=False)
app.add_typer(concept_app, name="concept", help="Concepts for your own diffusers pipeline: export.")


@concept_app.command("export")
def export(
    subject: Annotated[str, typer.Argument(help="Subject id in the catalog.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write.")],
    catalog: CatalogOpt = "",
    model_fingerprint: Annotated[
        str | None, typer.Option(help="Only the concept found on this model (a fingerprint or its first characters).")
    ] = None,
    mask_id: Annotated[str | None, typer.Option(help="Exactly this mask (when the subject has several).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Write a subject's concept as safetensors: its sparse neuron indices (the catalog's codec), class word and the
    fingerprint of the model it was found on. Load it with cones_tasks.concepts.load_concept(path, model=pipe)."""
    from cones_tasks.concepts import concept_from_stored, save_concept

    cat = _open(catalog)
    stored = cat.subject_masks(subject)
    if mask_id is not None:
        stored = [m for m in stored if m.mask_id == mask_id]
    if model_fingerprint is not None:
        stored = [m for m in stored if m.model_fingerprint.startswith(model_fingerprint)]
    if not stored:
        console.print(f"error: the catalog has no concept of subject {subject!r}"
                      f"{' matching --mask-id/--model-fingerprint' if mask_id or model_fingerprint else ''}; "
                      "run discover-concepts (or customize) for it first", soft_wrap=True, markup=False)
        raise typer.Exit(2)
    if len(stored) > 1:
        listing = "\n".join(f"  --mask-id {m.mask_id}  (model {m.model_fingerprint[:16]}, {m.neuron_count} neurons, "
                            f"seed {m.params.get('seed')})" for m in stored)
        console.print(f"error: subject {subject!r} has {len(stored)} concepts (other models or discovery settings); "
                      f"pick one:\n{listing}", soft_wrap=True, markup=False)
        raise typer.Exit(2)
    (m,) = stored
    concept = concept_from_stored(m, class_word=cat.get_subject(subject).class_word,
                                  model_source=cat.get_model(m.model_fingerprint).source)
    path = save_concept(concept, out)
    emit({"path": str(path), "subject": subject, "class_word": concept.class_word, "scope": concept.scope,
          "model_fingerprint": concept.model_fingerprint, "neurons": concept.mask.count, "bytes": path.stat().st_size},
         as_json=as_json, title="concept export")
