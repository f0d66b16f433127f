"""Word-scoped concept neurons: a subject's neurons shut at its own class word's rows only (docs/composition.md).

Under the paper's masking (Cones §3.1) a shut K/V weight acts on every text token. On the toy
model that makes masks work through the end-of-text and padding states, which a causal text
encoder fills with a summary of the whole prompt; in a two-subject prompt only the last subject
can own that summary, so unions fail (docs/research/composition.md). Here a subject's mask acts
at the rows of its class word instead, where the model reads its prompt.

What a word-scoped mask M does at one of its word's rows, for every cross-attention K/V layer W:

    k_row = W · x_row  −  (W ⊙ M) · s

where x_row is the row's text state in the prompt at hand and s is the word's *own* state — its
state in the subject's class phrase ("a dog"), the prompt discovery saw. When the prompt starts
with that phrase, x_row = s (the text encoder is causal) and this is exactly shutting M at the
row. When the word comes later ("a cat and a dog"), its state carries the prompt before it;
shutting M on that state would hand the mask an input it was never chosen for, so the shut
weights' contribution is taken from the word's own state, and the row keeps what the prompt
around it adds (W · (x_row − s)). Measured on the toy model: the full splice of s into the row
drew both subjects of a pair 0.06 of the time, this form 0.27, no splice 0.17 (same masks).

The edit is a sparse row update added after the K/V projection by the Cones attention processor
(cones_tasks.neurons.processor): the UNet's weights are never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cones_tasks.combinations import class_phrase
from cones_tasks.neurons.masks import ConceptMask, RowEdits
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.neurons.words import text_tokenizers, word_rows

__all__ = ["WordMask", "class_phrase_states", "mask_effects", "stack_row_edits", "word_row_edits"]


@dataclass(frozen=True)
class WordMask:
    """One subject of a prompt under token composition: its word-scoped mask and its class word."""

    mask: ConceptMask
    class_word: str


def class_phrase_states(model, class_word: str) -> torch.Tensor:
    """The class word's own text states [R, D]: its rows when the prompt is its class phrase ("a dog")."""
    phrase = class_phrase(class_word)
    (rows,) = word_rows(text_tokenizers(model), phrase, [class_word])
    states = model.encode_prompts([phrase])[0]  # [T, D]
    return states[list(rows)].float()


def mask_effects(unet, space: NeuronSpace, mask: ConceptMask, states: torch.Tensor) -> dict[str, torch.Tensor]:
    """{K/V parameter name: −(W ⊙ M) · s, fp32 [R, out]} for each layer with shut neurons; s = states [R, D].

    Sparse: costs the mask's indices, not a dense [out, in] matrix per layer.
    """
    mask.check(space)
    modules = space.modules(unet)
    effects = {}
    for name, local in space.locate(mask.indices).items():
        if local.size == 0:
            continue
        weight = modules[name].weight
        out_features, in_features = weight.shape
        idx = torch.from_numpy(local).to(weight.device)
        row, col = idx // in_features, idx % in_features
        w = weight.detach().reshape(-1)[idx].float()  # [n]
        s = states.to(weight.device, torch.float32)  # [R, D]
        effect = torch.zeros(s.shape[0], out_features, device=weight.device)
        effect.index_add_(1, row, -(w[None, :] * s[:, col]))
        effects[name] = effect
    return effects


def word_row_edits(
    model, space: NeuronSpace, prompts: Sequence[str], subjects: Sequence[Sequence[WordMask]]
) -> RowEdits | None:
    """The row edits that apply each prompt's word-scoped masks at their own class words.

    subjects[i]: the WordMasks of prompt i (empty: nothing at that prompt). Prompt i is element i
    of a UNet call over the prompts, or of the conditional half of a classifier-free-guidance call
    (RowEdits.offset; the unconditional half names no subject and stays unedited). Raises
    ClassWordNotInPromptError when a prompt does not name a subject's class word.
    """
    if len(subjects) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but word masks for {len(subjects)}; pass one list per prompt")
    if space.attention != "cross":
        raise ValueError(
            f"word-scoped masks act on text tokens, which only cross-attention reads; this neuron space is "
            f"attention={space.attention!r}: discover with attention='cross'"
        )
    states: dict[str, torch.Tensor] = {}
    effects: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    mentions = []
    for i, (prompt, scoped) in enumerate(zip(prompts, subjects)):
        if not scoped:
            continue
        spans = word_rows(text_tokenizers(model), prompt, [wm.class_word for wm in scoped])
        for wm, span in zip(scoped, spans):
            if wm.class_word not in states:
                states[wm.class_word] = class_phrase_states(model, wm.class_word)
            key = (wm.mask.content_hash, wm.class_word)
            if key not in effects:
                effects[key] = mask_effects(model.unet, space, wm.mask, states[wm.class_word])
            mentions.append((i, span, effects[key]))
    return stack_row_edits(space, mentions, device=next(model.unet.parameters()).device, batch_size=len(prompts))


def stack_row_edits(
    space: NeuronSpace, mentions: Sequence[tuple[int, Sequence[int], dict[str, torch.Tensor]]], *, device,
    batch_size: int | None,
) -> RowEdits | None:
    """One RowEdits from subject mentions: (UNet batch element, its token rows, mask_effects at those rows).

    Layers no mention edits are left out; a mention whose mask shuts nothing in an edited layer
    adds zeros there, so every layer's values line up with the same (batch, rows) pairs.
    """
    if not mentions:
        return None
    batch = [b for b, rows, _ in mentions for _ in rows]
    rows = [r for _, span, _ in mentions for r in span]
    per_layer = {}
    for e in space.entries:
        if all(e.name not in eff for _, _, eff in mentions):
            continue
        # one [R, out] block per subject mention
        per_layer[e.name] = torch.cat([
            eff[e.name] if e.name in eff else torch.zeros(len(span), e.shape[0], device=device) for _, span, eff in mentions
        ])
    return RowEdits(
        batch=torch.tensor(batch, device=device), rows=torch.tensor(rows, device=device), values=per_layer,
        batch_size=batch_size,
    )
