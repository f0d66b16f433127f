"""Choosing the layout's strengths: validate's lines under attention control, on the selection seeds (docs/research/layout.md).

Masks as `cones toy validate --quick` finds them (the first six toy subjects, six renders alone on context prompts
and twelve captioned scene photos each), for each discovery setting given; every layout is judged with validate's
single, context, crosstalk and pairs lines on the selection seeds (seed set 1). The chosen layout is then quoted
from `cones toy validate --quick` on the report seeds.

    python -m experiments.layout_sweep --out docs/research/layout-select.jsonl
    python -m experiments.layout_sweep --discovery '{"objective": "gate", "density": 0.01}' --out ...
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from cones_lab.validate import ValidateParams, discover_subjects, mask_lines
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.layout import Layout
from cones_tasks.neurons.objectives import parse_discovery
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS

# off, then inside (the word read more in its region) and outside (less elsewhere) around the defaults
DEFAULT_LAYOUTS = (None, {"inside": 1, "outside": 4}, {"inside": 2, "outside": 4}, {"inside": 3, "outside": 4},
                   {"inside": 2, "outside": 8}, {"inside": 4, "outside": 4})


def masks_for(model, subjects, discovery: dict, params: ValidateParams, cache: Path | None) -> dict:
    if cache is not None and cache.is_file():
        saved = pickle.loads(cache.read_bytes())
        if saved["discovery"] == discovery:
            return saved["masks"]
    masks = discover_subjects(model, subjects, parse_discovery(discovery), params)
    if cache is not None:
        cache.write_bytes(pickle.dumps({"discovery": discovery, "masks": masks}))
    return masks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discovery", default='{"objective": "fit"}', help="one discovery objective as JSON")
    parser.add_argument("--layouts", default=None, help="JSON list of Layouts (null: off); default: the sweep above")
    parser.add_argument("--n", type=int, default=48, help="images per line")
    parser.add_argument("--lines", default="single,context,crosstalk,multi", help="validate's lines to judge")
    parser.add_argument("--sizes", default="2", help="subjects per multi-subject image, e.g. 2,3")
    parser.add_argument("--scenes", type=int, default=12, help="captioned scene photos a subject (0: photos alone)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="keep the discovered masks here (pickle) and reuse them")
    parser.add_argument("--out", default=None, help="append one JSON line per layout here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_diffusion_model(TOY_MODEL_DIR)
    subjects = TOY_SUBJECTS[:6]
    discovery = json.loads(args.discovery)
    sizes = tuple(int(k) for k in args.sizes.split(","))
    lines = tuple(args.lines.split(","))
    base = ValidateParams(sample_steps=20, scene_references=args.scenes, multi_sizes=sizes, ceilings=False, reversed_order=False,
                          strategies=("token",))
    masks = masks_for(model, subjects, discovery, base, args.cache)
    space = NeuronSpace.from_unet(model.unet, attention=parse_discovery(discovery).attention)
    for setting in json.loads(args.layouts) if args.layouts else DEFAULT_LAYOUTS:
        params = base.model_copy(update={"layout": None if setting is None else Layout(**setting)})
        started = time.perf_counter()
        found = mask_lines(model, judge, subjects, masks, space, "token", params, seed=params.select_seed, n=args.n,
                           lines=lines)
        row = {
            "discovery": discovery, "layout": setting, "scene_references": args.scenes, "n": args.n, "seed": params.select_seed,
            "neuron_fraction": float(np.mean([m.fraction for m in masks.values()])),
            "single": found["single"]["hit_masked"] if "single" in found else None,
            "context": found.get("context"), "crosstalk": found.get("crosstalk"),
            **{f"multi{k}": found["multi"][str(k)] for k in sizes if "multi" in found},
            **{f"multi{k}_detail": found["multi_detail"][str(k)] for k in sizes if "multi" in found},
            "seconds": round(time.perf_counter() - started, 1), "subjects": [s.id for s in subjects],
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
