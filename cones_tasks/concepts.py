"""Concepts in your own diffusers pipeline: load a subject's concept neurons and apply them (README).

    dog = load_concept("dog.safetensors", model=pipe)        # or load_concept(catalog, "my-dog", model=pipe)
    with apply_concepts(pipe, [dog, cat]) as cones:
        images = pipe(prompts, cross_attention_kwargs=cones.kwargs(prompts, [[dog], [dog, cat]])).images

`apply_concepts` attaches the Cones attention processor (cones_tasks.neurons.processor) to the
pipeline's UNet for the block and puts the pipeline's own processors back on exit; the weights
are never written. Which concepts each image gets travels with the call, through
`cross_attention_kwargs`, so one call batches different combinations, and this project's own
generation (cones_tasks.sampling) goes through the very same path.

A concept is stored as its sparse neuron indices (the store's codec, cones_tasks.codec), its
class word and the fingerprint of the model it was found on (NeuronSpace.fingerprint: the K/V
weights themselves); a concept found on another model is refused, naming both.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cones_tasks.neurons.masks import ConceptMask
from cones_tasks.neurons.processor import KWARG, ConceptBatch, attached
from cones_tasks.neurons.space import MaskModelMismatchError, NeuronSpace

__all__ = [
    "AppliedConcepts",
    "Concept",
    "ConceptFileError",
    "ConceptModelMismatchError",
    "apply_concepts",
    "concept_batch",
    "concept_from_stored",
    "load_concept",
    "save_concept",
]

FORMAT = "cones-concept"
FORMAT_VERSION = "1"
Scope = Literal["word", "prompt"]


class ConceptModelMismatchError(MaskModelMismatchError):
    """A concept applied to (or loaded for) a model other than the one it was found on."""


class ConceptFileError(ValueError):
    """A file is not a readable Cones concept."""


@dataclass(frozen=True)
class Concept:
    """A subject's concept neurons, ready to apply: its mask, class word and where it acts.

    scope 'word': the neurons act at the class word's rows of each prompt (token composition, the
    default discovery); 'prompt': at every text token (the paper's masking; several such concepts
    in one image are composed as the union of their masks, Cones §3.3).
    """

    subject: str
    class_word: str
    mask: ConceptMask
    attention: str = "cross"
    scope: Scope = "word"
    model_source: str = ""  # where the base model was loaded from: for messages only

    def __post_init__(self) -> None:
        if not self.class_word:
            raise ValueError(f"concept {self.subject!r} needs its class word (e.g. 'dog')")
        if self.scope not in ("word", "prompt"):
            raise ValueError(f"concept scope must be 'word' or 'prompt', got {self.scope!r}")

    @property
    def model_fingerprint(self) -> str:
        return self.mask.space_fingerprint

    def check(self, space: NeuronSpace) -> None:
        """Raise ConceptModelMismatchError unless this concept was found on `space`'s model."""
        if self.model_fingerprint != space.fingerprint or self.mask.size != space.size:
            made = f" ({self.model_source})" if self.model_source else ""
            raise ConceptModelMismatchError(
                f"concept {self.subject!r} was made for model {self.model_fingerprint}{made}, but this pipeline's UNet "
                f"is model {space.fingerprint} ({space.size} {self.attention}-attention neurons); a concept only fits "
                "the weights it was discovered on: load that model, or discover the subject on this one"
            )


# ---------------------------------------------------------------- files


def save_concept(concept: Concept, path: str | Path) -> Path:
    """Write `concept` as a safetensors file: the indices in the store's codec, the rest as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    blob = concept.mask.to_bytes()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "subject": concept.subject,
        "class_word": concept.class_word,
        "model_fingerprint": concept.model_fingerprint,
        "model_source": concept.model_source,
        "attention": concept.attention,
        "scope": concept.scope,
        "neurons": str(concept.mask.count),
        "space_size": str(concept.mask.size),
        "codec": "cones_tasks.codec",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"indices": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, str(path), metadata=metadata)
    return path


def _read_file(path: Path) -> Concept:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ConceptFileError(f"concept file {path} does not exist; write one with `cones concept export`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            blob = f.get_tensor("indices").numpy().tobytes() if "indices" in f.keys() else None
    except (SafetensorError, OSError) as e:
        raise ConceptFileError(f"{path} is not a safetensors file ({e}); write concepts with `cones concept export`") from e
    if meta.get("format") != FORMAT or blob is None:
        raise ConceptFileError(
            f"{path} is a safetensors file but not a Cones concept (no {FORMAT!r} metadata and 'indices' tensor); "
            "write concepts with `cones concept export`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConceptFileError(
            f"{path} is a Cones concept of format version {meta.get('format_version')!r}; this cones reads version "
            f"{FORMAT_VERSION}: export it again with this version"
        )
    mask = ConceptMask.from_bytes(blob, space_fingerprint=meta["model_fingerprint"])
    return Concept(subject=meta["subject"], class_word=meta["class_word"], mask=mask, attention=meta["attention"],
                   scope=meta["scope"], model_source=meta.get("model_source", ""))  # type: ignore[arg-type]


# ---------------------------------------------------------------- loading


def load_concept(source: Any, subject: str | None = None, *, model: Any, mask_id: str | None = None) -> Concept:
    """A subject's concept for `model`, from an exported file or from a catalog.

    source: a path written by `cones concept export` / save_concept, or a catalog
    (`catalog.load_catalog(uri)`) with `subject` naming the subject there. model: the pipeline
    (or DiffusionModel, or UNet) it will be applied to; a concept found on another model raises
    ConceptModelMismatchError naming both fingerprints. In a catalog, a subject discovered with
    several parameter sets on this model needs `mask_id` to pick one.
    """
    unet = getattr(model, "unet", model)
    if subject is None:
        if not isinstance(source, (str, Path)):
            raise TypeError("load_concept(catalog, subject, model=...) needs the subject; a file needs only its path")
        concept = _read_file(Path(source))
        concept.check(NeuronSpace.from_unet(unet, attention=concept.attention))
        return concept
    return _from_catalog(source, subject, unet, mask_id)


def _from_catalog(catalog: Any, subject: str, unet: Any, mask_id: str | None) -> Concept:
    stored = list(catalog.subject_masks(subject))
    if mask_id is not None:
        stored = [m for m in stored if m.mask_id == mask_id]
    if not stored:
        which = f"mask {mask_id!r} of subject" if mask_id else "concept mask for subject"
        raise LookupError(f"the catalog has no {which} {subject!r}; run discover-concepts for it first")
    fingerprints: dict[str, str] = {}
    fits = []
    for m in stored:
        attention = stored_setting(m.params, "attention", "cross")
        if attention not in fingerprints:
            fingerprints[attention] = NeuronSpace.from_unet(unet, attention=attention).fingerprint
        if m.model_fingerprint == fingerprints[attention]:
            fits.append(m)
    if not fits:
        made = sorted({m.model_fingerprint for m in stored})
        raise ConceptModelMismatchError(
            f"subject {subject!r} has concepts for model(s) {', '.join(made)} but this pipeline's UNet is model "
            f"{', '.join(sorted(set(fingerprints.values())))}; a concept only fits the weights it was discovered on: "
            "load that model, or discover the subject on this one"
        )
    if len(fits) > 1:
        listing = "; ".join(f"{m.mask_id} ({json.dumps(m.params, sort_keys=True)[:120]})" for m in fits)
        raise ValueError(f"subject {subject!r} has {len(fits)} concepts for this model (different discovery settings): "
                         f"{listing}; pass mask_id= to pick one")
    (m,) = fits
    return concept_from_stored(m, class_word=catalog.get_subject(subject).class_word,
                               model_source=catalog.get_model(m.model_fingerprint).source)


def concept_from_stored(stored: Any, *, class_word: str, model_source: str = "") -> Concept:
    """A Concept from a catalog's stored mask (catalog.StoredMask) and its subject's class word."""
    mask = ConceptMask.from_bytes(stored.blob, space_fingerprint=stored.model_fingerprint)
    return Concept(subject=stored.subject, class_word=class_word, mask=mask,
                   attention=stored_setting(stored.params, "attention", "cross"),
                   scope=stored_setting(stored.params, "scope", "word"), model_source=model_source)


def stored_setting(params: Mapping[str, Any], key: str, default: str) -> str:
    """A discovery setting from a stored mask's parameters, wherever the parameter model nests it."""
    todo = [params]
    while todo:
        d = todo.pop(0)
        if key in d and isinstance(d[key], str):
            return d[key]
        todo.extend(v for v in d.values() if isinstance(v, Mapping))
    return default


# ---------------------------------------------------------------- applying


def concept_batch(model, space: NeuronSpace | None, prompts: Sequence[str], *, masks: Sequence | None = None,
                  word_masks: Sequence[Sequence] | None = None, layout: Any = None,
                  aspect: float = 1.0) -> ConceptBatch | None:
    """The ConceptBatch of one call over `prompts`: masks[i] at every token of image i, word_masks[i] at their words.

    layout (cones_tasks.neurons.layout.Layout): holds each prompt's word-scoped subjects in their own regions
    (attention control; a lone subject's region is the whole image); `aspect` is the images' height / width.
    None when nothing applies (the call runs the model's own processors).
    """
    every = list(masks) if masks is not None and any(m is not None for m in masks) else None
    edits = regions = None
    if word_masks is not None and any(word_masks):
        from cones_tasks.neurons.layout import word_regions
        from cones_tasks.neurons.word_scope import word_row_edits

        edits = word_row_edits(model, space, prompts, word_masks)
        if layout is not None:
            regions = word_regions(model, prompts, [[wm.class_word for wm in words] for words in word_masks], layout,
                                   aspect=aspect)
    if every is None and edits is None:
        return None
    return ConceptBatch(space, every or [None], edits, regions)


class AppliedConcepts:
    """The concepts of an `apply_concepts` block; `kwargs` says which of them each image gets."""

    def __init__(self, model, space: NeuronSpace, concepts: Sequence[Concept]) -> None:
        self.model, self.space, self.concepts = model, space, tuple(concepts)

    def batch(self, prompts: str | Sequence[str], per_prompt: Sequence[Sequence[Concept]] | None = None, *,
              images_per_prompt: int = 1, layout: Any = None, aspect: float = 1.0) -> ConceptBatch | None:
        """The ConceptBatch for one pipeline call over `prompts` (see `kwargs`)."""
        from cones_tasks.neurons.word_scope import WordMask

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if per_prompt is None:
            per_prompt = [self.concepts] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but concepts for {len(per_prompt)}; pass one list per prompt")
        masks, words = [], []
        for chosen in per_prompt:
            unknown = [c for c in chosen if c not in self.concepts]
            if unknown:
                raise ValueError(f"concepts {[c.subject for c in unknown]} are not applied in this block; "
                                 "pass them to apply_concepts")
            every = [c.mask for c in chosen if c.scope == "prompt"]
            masks.append(every[0].union(*every[1:]) if every else None)  # Cones §3.3: the union at every token
            words.append([WordMask(c.mask, c.class_word) for c in chosen if c.scope == "word"])
        if images_per_prompt > 1:  # the pipelines repeat each prompt in place: [p0, p0, p1, p1, ...]
            prompts, masks, words = ([x for x in seq for _ in range(images_per_prompt)] for seq in (prompts, masks, words))
        return concept_batch(self.model, self.space, prompts, masks=masks, word_masks=words, layout=layout, aspect=aspect)

    def kwargs(self, prompts: str | Sequence[str], per_prompt: Sequence[Sequence[Concept]] | None = None, *,
               images_per_prompt: int = 1, layout: Any = None, aspect: float = 1.0) -> dict[str, Any] | None:
        """`cross_attention_kwargs` for one pipeline call over `prompts`.

        per_prompt[i]: the concepts image i gets (default: every concept of the block, in every
        prompt). A word-scoped concept acts at its class word, which its prompt must name (once per
        concept of that class). images_per_prompt: the call's num_images_per_prompt. layout
        (cones_tasks.neurons.layout.Layout): hold each image's word-scoped subjects in their own regions, in the
        order its prompt names them; aspect: the images' height / width.
        """
        batch = self.batch(prompts, per_prompt, images_per_prompt=images_per_prompt, layout=layout, aspect=aspect)
        return None if batch is None else {KWARG: batch}


@contextlib.contextmanager
def apply_concepts(pipe: Any, concepts: Sequence[Concept]) -> Iterator[AppliedConcepts]:
    """Within the block, `pipe` (a StableDiffusion(XL)Pipeline, or a DiffusionModel) can draw `concepts`.

    Images whose call brings `cross_attention_kwargs=cones.kwargs(...)` get their concepts; calls
    without it are the pipeline's own. On exit the UNet's own attention processors are back (the
    same objects); its weights are never written. Raises ConceptModelMismatchError for a concept
    found on another model.
    """
    from cones_tasks.loading import DiffusionModel

    concepts = list(concepts)
    if not concepts:
        raise ValueError("apply_concepts needs at least one concept (load_concept)")
    kinds = {c.attention for c in concepts}
    if len(kinds) > 1:
        raise ValueError(f"concepts of different neuron spaces ({sorted(kinds)}) cannot be applied together; "
                         "discover them with the same attention setting")
    model = pipe if isinstance(pipe, DiffusionModel) else DiffusionModel.from_pipeline(pipe)
    space = NeuronSpace.from_unet(model.unet, attention=kinds.pop())
    for c in concepts:
        c.check(space)
    with attached(model.unet):
        yield AppliedConcepts(model, space, concepts)
