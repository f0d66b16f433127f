"""Do concept neurons act through their own word? Shut them only at some token positions.

    python docs/union-token-scope.py      (~5 min on 2 cores; output: docs/union-token-scope-8750.txt)

An experiment, not the product's masking (cones_tasks/neurons/masks.py shuts a weight for
every token, as the paper does).

Masks are discovered as in docs/union-failures.py (whole prompt, 10 %, context prompts). At
sampling, the K/V projections of the conditional half compute the unmasked output and then, for
each subject, overwrite the rows at that subject's token positions with its masked projection.
The unconditional half stays unmasked. Scopes:
- "word": the class word's token only;
- "word+after": the class word and every later token up to the next subject's word (the
  causal text encoder carries the word into later states, EOS and padding included).
"""
import itertools
import sys
from collections import Counter
from importlib import import_module
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
uf = import_module("union-failures")  # discovery and tallies as there

from cones_tasks.combinations import subjects_phrase
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.discovery import DiscoveryParams
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.sampling import sample
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.captions import class_prompt
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, reference_backgrounds, reference_renders

N = 24
model = load_diffusion_model(TOY_MODEL_DIR)
params = DiscoveryParams(steps=8, batch_size=4, threshold="fraction", threshold_value=0.1, rounds=30, rho=0.0,
                         prior_weight=0.0, attention="cross")
space = NeuronSpace.from_unet(model.unet, attention="cross")
modules = space.modules(model.unet)
subjects = TOY_SUBJECTS[:4]
masks = {}
for s in subjects:
    prompts = [f"{class_prompt(s.shape)} on {bg}" for bg in reference_backgrounds(6)]
    masks[s.id] = uf.discover(model, reference_renders(s, n=6, seed=0), prompts, s.shape, params)
print("discovered", flush=True)


def token_ids(prompt):
    return model.tokenizer(prompt, padding="max_length", max_length=model.tokenizer.model_max_length,
                           truncation=True).input_ids


def word_positions(prompt, shapes):
    """Position of each class word's (single) token, in prompt order."""
    ids = token_ids(prompt)
    out, start = [], 0
    for shape in shapes:
        wid = model.tokenizer(shape, add_special_tokens=False).input_ids
        assert len(wid) == 1, (shape, wid)
        pos = ids.index(wid[0], start)
        out.append(pos)
        start = pos + 1
    return out, len(ids)


def scoped(prompt, shapes, mask_list, scope):
    """Install token-scoped masked forwards on the K/V modules; returns an uninstall function."""
    positions, T = word_positions(prompt, shapes)
    spans = []
    for i, p in enumerate(positions):
        if scope == "word":
            spans.append([p])
        else:
            end = positions[i + 1] if i + 1 < len(positions) else T
            spans.append(list(range(p, end)))
    located = [space.locate(m.indices) for m in mask_list]
    patched = []
    for e in space.entries:
        module = modules[e.name]
        weights = []
        for loc in located:
            w = module.weight.detach().clone().reshape(-1)
            w[torch.from_numpy(loc[e.name])] = 0
            weights.append(w.view_as(module.weight))

        def forward(x, module=module, weights=weights):
            out = F.linear(x, module.weight, module.bias)
            half = x.shape[0] // 2  # [uncond, cond]: mask the conditional half only
            for w, span in zip(weights, spans):
                idx = torch.tensor(span)
                out[half:, idx] = F.linear(x[half:, idx], w, module.bias)
            return out

        module.forward = forward
        patched.append(module)
    return lambda: [m.__dict__.pop("forward") for m in patched]


def run(prompt, shapes, mask_list, scope):
    undo = scoped(prompt, shapes, mask_list, scope)
    try:
        return sample(model, [prompt] * N, seeds=list(range(N)), steps=20, guidance_scale=3.0)
    finally:
        undo()


# does a mask act through its own word? single subject under its class prompt
for scope in ("word", "word+after"):
    hits = 0
    for s in subjects:
        images = run(class_prompt(s.shape), [s.shape], [masks[s.id]], scope)
        hits += sum(uf._looks(uf.judge(im), s.shape, s) for im in images)
    print(f"single, token-scoped {scope}: {hits}/{N * len(subjects)}", flush=True)

totals = {"word": Counter(), "word+after": Counter()}
for a, b in itertools.combinations(subjects, 2):
    if a.shape == b.shape:
        continue
    prompt = subjects_phrase([a.shape, b.shape])
    for scope in totals:
        c = uf.tally(run(prompt, [a.shape, b.shape], [masks[a.id], masks[b.id]], scope), a, b)
        totals[scope].update(c)
        print(f"{a.id} + {b.id} {scope}:", dict(c), flush=True)
for scope, c in totals.items():
    print("total", scope, dict(c))
