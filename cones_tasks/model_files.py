"""What a model folder and a CLIP weights file must hold, checked from the files alone (no torch, no imports).

The loader (cones_tasks.loading) refuses with the first of these problems; `cones run` lists
them all before any flow starts (docs/pipeline.md, "Pre-flight"), so a wrong path costs a
second, not an ingest and a discovery's worth of tracebacks.
"""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
# SDXL adds a second text encoder and tokenizer (their states are concatenated, the second one's pooled)
OPTIONAL_COMPONENTS = ("vae", "text_encoder_2", "tokenizer_2")
WEIGHTED_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")
# model_index.json names classes to import; only these libraries may be named (a config
# file must not be able to import arbitrary code).
ALLOWED_LIBRARIES = ("diffusers", "transformers")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# Every way to opt in, named in each pickle refusal; all of them exist (tests/flows/test_trust_pickle.py
# checks the flag against `cones run --help` and the fields against the config models).
TRUST_PICKLE_HINT = (
    "If you trust the source, opt in: trust_pickle=True in Python, `trust_pickle: true` on the config's "
    "model (ModelRef) or scoring.clip (ClipRef), or `cones run <flow> --config FILE --trust-pickle`."
)


def model_folder_problems(path: str | Path, *, trust_pickle: bool = False) -> list[str]:
    """Every reason the folder cannot be loaded as a diffusers model, each naming its fix; [] when it can."""
    root = Path(path).expanduser()
    if not root.is_dir():
        return [f"model folder {root} does not exist; pass the folder that holds model_index.json."]
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return [
            f"{root} has no model_index.json, so it is not a diffusers model folder; point at the folder written by "
            "pipeline.save_pretrained (it holds model_index.json and unet/, text_encoder/, tokenizer/, scheduler/)."
        ]
    try:
        index = json.loads(index_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return [f"{index_path} is not valid JSON ({exc}); copy the model folder again."]
    problems = []
    for component in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS:
        spec = index.get(component)
        if spec is None or spec == [None, None]:
            if component in REQUIRED_COMPONENTS:
                problems.append(
                    f"{index_path} does not list the required component {component!r}; a Cones model needs {REQUIRED_COMPONENTS}."
                )
            continue
        if (problem := component_spec_problem(component, spec, index_path)) is not None:
            problems.append(problem)
            continue
        folder = root / component
        if not folder.is_dir():
            problems.append(f"component {component!r} is listed in model_index.json but {folder} is missing; copy the whole model folder.")
        elif component in WEIGHTED_COMPONENTS and (problem := weights_problem(folder, component, trust_pickle=trust_pickle)):
            problems.append(problem)
    if _listed(index, "text_encoder_2") != _listed(index, "tokenizer_2"):
        problems.append(
            f"{index_path} lists only one of text_encoder_2 and tokenizer_2; an SDXL model needs both (copy the whole folder)"
        )
    return problems


def _listed(index: dict, component: str) -> bool:
    return index.get(component) not in (None, [None, None])


def component_spec_problem(component: str, spec: object, index_path: Path) -> str | None:
    """Why a model_index.json entry is not a loadable [library, class] pair, or None."""
    if not (isinstance(spec, list) and len(spec) == 2 and all(isinstance(s, str) for s in spec)):
        return f"{index_path}: entry {component!r} must be [library, class], got {spec!r}."
    if spec[0] not in ALLOWED_LIBRARIES:
        return f"{index_path}: {component} comes from {spec[0]!r}; only {ALLOWED_LIBRARIES} are loaded."
    return None


def weights_problem(folder: Path, component: str, *, trust_pickle: bool) -> str | None:
    """Why a component folder's weights cannot be loaded (none, or pickle-only and not trusted), or None."""
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return None
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        if trust_pickle:
            return None
        return (
            f"{component}: only pickle weights found ({', '.join(pickles)}) in {folder}. Pickle files can run "
            "arbitrary code when loaded. Convert them to safetensors (e.g. load once in a sandbox and "
            f"save_pretrained(..., safe_serialization=True)). {TRUST_PICKLE_HINT}"
        )
    return f"{component}: no weights file in {folder}; expected a *.safetensors file saved by save_pretrained."


def clip_weights_problem(weights_path: str | Path, *, trust_pickle: bool = False) -> str | None:
    """Why the CLIP weights file cannot be loaded (missing, or pickle and not trusted), or None."""
    weights = Path(weights_path).expanduser()
    if not weights.is_file():
        return f"CLIP weights {weights} do not exist; pass the path of the model's .safetensors file."
    if weights.suffix in PICKLE_SUFFIXES and not trust_pickle:
        return (
            f"CLIP weights {weights} are a pickle file, which can run arbitrary code when loaded. Convert to "
            f"safetensors (safetensors.torch.save_file(state_dict, ...)). {TRUST_PICKLE_HINT}"
        )
    return None
