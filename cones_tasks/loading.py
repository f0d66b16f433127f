"""Load a diffusion model (diffusers folder layout) and a CLIP scorer (open_clip), local files only.

One code path for the toy model and a real Stable Diffusion checkpoint: the
folder's `model_index.json` names each component's library and class, as `DiffusionPipeline`
does; nothing here knows which model it is given.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REQUIRED_COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler")
OPTIONAL_COMPONENTS = ("vae",)
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
WEIGHTED_COMPONENTS = ("unet", "text_encoder", "vae")


class ModelLoadError(ValueError):
    """A model folder or weights file cannot be loaded; the message names the fix."""


@dataclass
class DiffusionModel:
    """The parts of a text-to-image diffusion model that Cones works on."""

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any | None
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def resolution(self) -> int:
        """Image side in pixels (latent side × VAE downscale when there is a VAE)."""
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * scale

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Per-token text states [B, T, D] — what the UNet's cross-attention K/V read."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.dtype)


def _check_weights(folder: Path, component: str, *, trust_pickle: bool) -> bool:
    """Return whether to load safetensors; refuse pickle-only folders unless trusted."""
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return True
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        if trust_pickle:
            return False
        raise ModelLoadError(
            f"{component}: only pickle weights found ({', '.join(pickles)}) in {folder}. Pickle files can run "
            "arbitrary code when loaded. Convert them to safetensors (e.g. load once in a sandbox and "
            f"save_pretrained(..., safe_serialization=True)). {TRUST_PICKLE_HINT}"
        )
    raise ModelLoadError(f"{component}: no weights file in {folder}; expected a *.safetensors file saved by save_pretrained.")


def _component_class(component: str, spec: Any, index_path: Path):
    if not (isinstance(spec, list) and len(spec) == 2 and all(isinstance(s, str) for s in spec)):
        raise ModelLoadError(f"{index_path}: entry {component!r} must be [library, class], got {spec!r}.")
    library, class_name = spec
    if library not in ALLOWED_LIBRARIES:
        raise ModelLoadError(f"{index_path}: {component} comes from {library!r}; only {ALLOWED_LIBRARIES} are loaded.")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelLoadError(f"{index_path}: {library} has no class {class_name!r} (named for {component}); is {library} too old?")
    return cls


def load_diffusion_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, trust_pickle: bool = False
) -> DiffusionModel:
    """Load a diffusers-layout folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, optional vae/)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist; pass the folder that holds model_index.json.")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(
            f"{root} has no model_index.json, so it is not a diffusers model folder; point at the folder written by "
            "pipeline.save_pretrained (it holds model_index.json and unet/, text_encoder/, tokenizer/, scheduler/)."
        )
    index = json.loads(index_path.read_text())
    parts: dict[str, Any] = {}
    for component in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS:
        spec = index.get(component)
        if spec is None or spec == [None, None]:
            if component in REQUIRED_COMPONENTS:
                raise ModelLoadError(f"{index_path} does not list the required component {component!r}; a Cones model needs {REQUIRED_COMPONENTS}.")
            parts[component] = None
            continue
        folder = root / component
        if not folder.is_dir():
            raise ModelLoadError(f"component {component!r} is listed in model_index.json but {folder} is missing; copy the whole model folder.")
        cls = _component_class(component, spec, index_path)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if component in WEIGHTED_COMPONENTS:
            kwargs["use_safetensors"] = _check_weights(folder, component, trust_pickle=trust_pickle)
        try:
            parts[component] = cls.from_pretrained(folder, **kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            if "shape" in str(e).lower() or "size mismatch" in str(e).lower():
                raise ModelLoadError(
                    f"{component}: the weights in {folder} do not match its config.json ({e}). The config and weights "
                    "come from different models; re-export the component with save_pretrained."
                ) from e
            raise ModelLoadError(f"{component}: could not load {folder}: {e}") from e
    for component in WEIGHTED_COMPONENTS:
        if (module := parts[component]) is not None:
            # dtype only when it changes: diffusers warns on any dtype cast, even float32 to float32
            cast = {} if next(module.parameters()).dtype == dtype else {"dtype": dtype}
            module.to(device=device, **cast).eval().requires_grad_(False)
    return DiffusionModel(source=str(root), **parts)


class ClipScorer:
    """Image and text embeddings from an open_clip model, L2-normalised [N, D]."""

    def __init__(self, model, preprocess, tokenizer, *, name: str, device: str | torch.device = "cpu"):
        self.model, self.preprocess, self.tokenizer = model.eval(), preprocess, tokenizer
        self.name, self.device = name, torch.device(device)

    @torch.no_grad()
    def embed_images(self, images, *, batch_size: int = 256) -> torch.Tensor:
        """uint8 [N, H, W, 3] → [N, D]; each image goes through the model's own preprocessing."""
        from PIL import Image

        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(im)) for im in images[i : i + batch_size]])
            out.append(self.model.encode_image(batch.to(self.device), normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device), normalize=True).float().cpu()


def load_clip_scorer(
    model_name: str, weights_path: str | Path, *, device: str | torch.device = "cpu", trust_pickle: bool = False
) -> ClipScorer:
    """`open_clip.create_model_and_transforms(model_name, pretrained=weights_path)`, with clear errors.

    A model name open_clip does not know is registered from a `<model_name>.json` config next to
    the weights (the toy CLIP ships one; real architectures like ViT-L-14 are built in)."""
    import open_clip

    weights = Path(weights_path).expanduser()
    if not weights.is_file():
        raise ModelLoadError(f"CLIP weights {weights} do not exist; pass the path of the model's .safetensors file.")
    if weights.suffix in PICKLE_SUFFIXES and not trust_pickle:
        raise ModelLoadError(
            f"CLIP weights {weights} are a pickle file, which can run arbitrary code when loaded. Convert to "
            f"safetensors (safetensors.torch.save_file(state_dict, ...)). {TRUST_PICKLE_HINT}"
        )
    if model_name not in open_clip.list_models():
        config = weights.parent / f"{model_name}.json"
        if not config.is_file():
            raise ModelLoadError(
                f"open_clip does not know the model {model_name!r} and there is no {config.name} next to the weights; "
                f"use a built-in name (e.g. ViT-L-14) or ship the architecture config as {config}."
            )
        open_clip.add_model_config(config)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(weights), device=device, weights_only=not trust_pickle
        )
    except (RuntimeError, AssertionError, KeyError) as e:  # open_clip reports mismatches in all three ways
        raise ModelLoadError(
            f"CLIP weights {weights} do not fit the {model_name!r} architecture ({type(e).__name__}: {e}); "
            "check that the model name matches the weights."
        ) from e
    return ClipScorer(model, preprocess, open_clip.get_tokenizer(model_name), name=model_name, device=device)
