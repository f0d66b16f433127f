"""What `cones run` checks before any flow starts (docs/pipeline.md, "Pre-flight").

Only what is cheap and certain: files that must exist, folders that must be reachable, a catalog
that must take writes. A run that would fail on any of these fails here, in one line per problem,
instead of after ingest in a discovery task.
"""

from __future__ import annotations

from typing import Any


def preflight_problems(config: Any) -> list[str]:
    """Every problem found in a flow config's model, CLIP weights, subject sources and catalog; [] when none."""
    from catalog.sources import source_problem
    from catalog.store import Store
    from cones_tasks.config import SubjectSource
    from cones_tasks.model_files import clip_weights_problem, model_folder_problems

    problems: list[str] = []
    if (model := getattr(config, "model", None)) is not None:
        problems += [f"model.path: {p}" for p in model_folder_problems(model.path, trust_pickle=model.trust_pickle)]
    scoring = getattr(config, "scoring", None)
    if scoring is not None and scoring.clip is not None:
        clip = scoring.clip
        if (problem := clip_weights_problem(clip.weights_path, trust_pickle=clip.trust_pickle)) is not None:
            problems.append(f"scoring.clip.weights_path: {problem}")
    for i, subject in enumerate(getattr(config, "subjects", ())):
        if isinstance(subject, SubjectSource) and (problem := source_problem(subject.uri)) is not None:
            problems.append(f"subjects.{i}.uri: {problem}")
    try:
        problem = Store(config.catalog).write_problem()
    except Exception as exc:  # noqa: BLE001 — an unknown scheme or a missing extra: CatalogURIError says which
        problem = str(exc)
    if problem is not None:
        problems.append(f"catalog: {problem}")
    return problems
