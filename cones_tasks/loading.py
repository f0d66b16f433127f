"""Load a diffusion model (diffusers folder layout) and a CLIP scorer (open_clip), local files only.

One code path for the toy model and a real Stable Diffusion checkpoint (1.x, 2.x or XL): the
folder's `model_index.json` names each component's library and class, as `DiffusionPipeline`
does; nothing here knows which model it is given. Text goes through the stock diffusers
pipeline's own `encode_prompt` and images through its denoising loop (`DiffusionModel.pipeline`),
so what Cones discovers on and generates with is what a user's StableDiffusion(XL)Pipeline computes.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cones_tasks.neurons.words import TOKENIZER_LOCK

from cones_tasks.model_files import (  # noqa: F401  (re-exported: the loader's public constants)
    ALLOWED_LIBRARIES,
    OPTIONAL_COMPONENTS,
    PICKLE_SUFFIXES,
    REQUIRED_COMPONENTS,
    TRUST_PICKLE_HINT,
    WEIGHTED_COMPONENTS,
    clip_weights_problem,
    component_spec_problem,
    model_folder_problems,
    weights_problem,
)

# model_index.json settings (not components) that the pipelines take as arguments
PIPELINE_OPTIONS = ("force_zeros_for_empty_prompt",)


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
    text_encoder_2: Any | None = None  # SDXL
    tokenizer_2: Any | None = None
    options: dict[str, Any] = field(default_factory=dict)  # PIPELINE_OPTIONS from model_index.json

    @classmethod
    def from_pipeline(cls, pipe) -> DiffusionModel:
        """The components of a diffusers StableDiffusion(XL)Pipeline, shared with it (not copied)."""
        missing = [c for c in ("unet", "text_encoder", "tokenizer") if getattr(pipe, c, None) is None]
        if missing:
            raise TypeError(
                f"{type(pipe).__name__} has no {', '.join(missing)}: pass a text-to-image pipeline such as "
                "StableDiffusionPipeline or StableDiffusionXLPipeline"
            )
        config = getattr(pipe, "config", {})
        return cls(
            unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, scheduler=pipe.scheduler,
            vae=getattr(pipe, "vae", None), source=getattr(pipe, "name_or_path", None) or type(pipe).__name__,
            text_encoder_2=getattr(pipe, "text_encoder_2", None), tokenizer_2=getattr(pipe, "tokenizer_2", None),
            options={k: config[k] for k in PIPELINE_OPTIONS if k in config},
        )

    @property
    def xl(self) -> bool:
        """Two text encoders, pooled text embeddings and added time ids (Stable Diffusion XL)."""
        return self.text_encoder_2 is not None

    @property
    def tokenizers(self) -> list[Any]:
        """Every tokenizer the prompt goes through (SDXL: two, whose token rows must agree)."""
        return [self.tokenizer] + ([self.tokenizer_2] if self.tokenizer_2 is not None else [])

    def pipeline(self, scheduler: Any | None = None):
        """A stock diffusers pipeline over these components (shared, not copied), progress bar off.

        StableDiffusionXLPipeline when there is a second text encoder, else StableDiffusionPipeline (a
        pixel-space model without a VAE runs it with output_type="latent"). The scheduler is set after
        construction: the pipelines' constructors rewrite an old scheduler config (steps_offset,
        clip_sample), and Cones samples with exactly the scheduler it was given. A new pipeline per
        call: pipelines keep per-call state on themselves (guidance scale, cross_attention_kwargs), so
        one shared between threads would mix their calls.
        """
        if self.xl:
            from diffusers import StableDiffusionXLPipeline

            pipe = StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=None,
                force_zeros_for_empty_prompt=self.options.get("force_zeros_for_empty_prompt", True),
                add_watermarker=False,
            )
        else:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet, scheduler=None,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        pipe.scheduler = scheduler if scheduler is not None else self.scheduler
        pipe.set_progress_bar_config(disable=True)
        return pipe

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
        """Per-token text states [B, T, D] — what the UNet's cross-attention K/V read (the pipeline's encode_prompt)."""
        return self.conditions(prompts)[0]

    @torch.no_grad()
    def conditions(self, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """(text states [B, T, D], the UNet's added_cond_kwargs or None), as the stock pipeline computes them.

        SDXL: the two encoders' penultimate states side by side, and {"text_embeds": pooled [B, P],
        "time_ids": [B, 6]} with the time ids of an uncropped image at the model's resolution, the
        ones the pipeline uses by default.
        """
        pipe = self.pipeline()
        with TOKENIZER_LOCK:  # the tokenizer is shared with other threads (neurons/words.py)
            if not self.xl:
                states, _ = pipe.encode_prompt(list(prompts), self.device, 1, False)
                return states.to(self.dtype), None
            states, _, pooled, _ = pipe.encode_prompt(
                prompt=list(prompts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        # (original size, crop top-left, target size): the pipeline's defaults for an image of the model's resolution
        side = self.resolution
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=self.device, dtype=self.dtype)
        added = {"text_embeds": pooled.to(self.dtype), "time_ids": time_ids.repeat(len(prompts), 1)}
        return states.to(self.dtype), added


def _check_weights(folder: Path, component: str, *, trust_pickle: bool) -> bool:
    """Return whether to load safetensors; refuse pickle-only folders unless trusted."""
    if (problem := weights_problem(folder, component, trust_pickle=trust_pickle)) is not None:
        raise ModelLoadError(problem)
    return any(p.suffix == ".safetensors" for p in folder.iterdir() if p.is_file())


def _component_class(component: str, spec: Any, index_path: Path):
    if (problem := component_spec_problem(component, spec, index_path)) is not None:
        raise ModelLoadError(problem)
    library, class_name = spec
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelLoadError(f"{index_path}: {library} has no class {class_name!r} (named for {component}); is {library} too old?")
    return cls


def load_diffusion_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, trust_pickle: bool = False
) -> DiffusionModel:
    """Load a diffusers-layout folder (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/, optional vae/)."""
    root = Path(path).expanduser()
    if problems := model_folder_problems(root, trust_pickle=trust_pickle):  # the files, before any import or load
        raise ModelLoadError(problems[0])
    index_path = root / "model_index.json"
    index = json.loads(index_path.read_text())
    parts: dict[str, Any] = {}
    for component in REQUIRED_COMPONENTS + OPTIONAL_COMPONENTS:
        spec = index.get(component)
        if spec is None or spec == [None, None]:
            parts[component] = None
            continue
        folder = root / component
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
    options = {k: index[k] for k in PIPELINE_OPTIONS if k in index}
    return DiffusionModel(source=str(root), options=options, **parts)


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
    if (problem := clip_weights_problem(weights, trust_pickle=trust_pickle)) is not None:
        raise ModelLoadError(problem)
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
