"""Do concept neurons act through their own word? Shut them only at some token positions.

    python -m experiments.union_token_scope      (from the repo root; ~5 min on 2 cores;
                                                 output: docs/research/union-token-scope-8750.txt)

An experiment, not the product's masking (cones_tasks/neurons/masks.py shuts a weight for
every token, as the paper does).

Masks are discovered as in experiments/union_failures.py (whole prompt, 10 %, context prompts). At
sampling, the K/V projections of the conditional half compute the unmasked output and then, for
each subject, overwrite the rows at that subject's token positions with its masked projection.
The unconditional half stays unmasked. Scopes:
- "word": the class word's token only;
- "word+after": the class word and every later token up to the next subject's word (the
  causal text encoder carries the word into later states, EOS and padding included).
"""
from __future__ import annotations

import contextlib
import itertools
from collections import Counter

import torch
import torch.nn.functional as F

from cones_tasks.combinations import subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.captions import class_prompt
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS
from experiments.union_failures import (  # run 4's discovery and tallies, as there
    context_masks,
    run4_params,
    tally,
)

N = 24
SCOPES = ("word", "word+after")


def word_positions(tokenizer, prompt: str, shapes: list[str]) -> tuple[list[int], int]:
    """Each class word's (single) token position, in prompt order, and the padded length."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    positions, start = [], 0
    for shape in shapes:
        (word,) = tokenizer(shape, add_special_tokens=False).input_ids
        start = ids.index(word, start)
        positions.append(start)
        start += 1
    return positions, len(ids)


def spans(positions: list[int], length: int, scope: str) -> list[list[int]]:
    """Token positions each subject's mask covers: its word, or its word up to the next subject's."""
    if scope == "word":
        return [[p] for p in positions]
    ends = [*positions[1:], length]
    return [list(range(p, end)) for p, end in zip(positions, ends)]


@contextlib.contextmanager
def token_scoped(model, space, prompt, shapes, masks, scope):
    """K/V forwards that shut each mask only at its subject's token span, conditional half only."""
    subject_spans = [torch.tensor(span) for span in spans(*word_positions(model.tokenizer, prompt, shapes), scope)]
    located = [space.locate(m.indices) for m in masks]
    modules = space.modules(model.unet)
    patched = []
    try:
        for e in space.entries:
            module = modules[e.name]
            shut = []
            for loc in located:
                w = module.weight.detach().clone().reshape(-1)
                w[torch.from_numpy(loc[e.name])] = 0
                shut.append(w.view_as(module.weight))

            def forward(x, module=module, shut=shut):
                out = F.linear(x, module.weight, module.bias)
                half = x.shape[0] // 2  # [uncond, cond] under guidance: mask the conditional half only
                for w, idx in zip(shut, subject_spans):
                    out[half:, idx] = F.linear(x[half:, idx], w, module.bias)
                return out

            module.forward = forward
            patched.append(module)
        yield
    finally:
        for module in patched:
            module.__dict__.pop("forward")


def main() -> None:
    model = load_diffusion_model(TOY_MODEL_DIR)
    space = NeuronSpace.from_unet(model.unet, attention="cross")
    subjects = TOY_SUBJECTS[:4]
    masks = context_masks(model, subjects, run4_params())
    print("discovered", flush=True)

    def run(prompt, shapes, mask_list, scope):
        with token_scoped(model, space, prompt, shapes, mask_list, scope):
            return sample(model, [prompt] * N, seeds=list(range(N)), steps=20, guidance_scale=3.0)

    # does a mask act through its own word? each subject under its class prompt
    for scope in SCOPES:
        hits = 0
        for s in subjects:
            images = run(class_prompt(s.shape), [s.shape], [masks[s.id]], scope)
            hits += sum(judge(im).shows(s) for im in images)
        print(f"single, token-scoped {scope}: {hits}/{N * len(subjects)}", flush=True)

    totals = {scope: Counter() for scope in SCOPES}
    for a, b in itertools.combinations(subjects, 2):
        if a.shape == b.shape:
            continue
        prompt = subjects_phrase([a.shape, b.shape])
        for scope in SCOPES:
            c = tally(run(prompt, [a.shape, b.shape], [masks[a.id], masks[b.id]], scope), a, b)
            totals[scope].update(c)
            print(f"{a.id} + {b.id} {scope}:", dict(c), flush=True)
    for scope, c in totals.items():
        print("total", scope, dict(c))


if __name__ == "__main__":
    main()
