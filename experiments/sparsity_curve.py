"""Single hit and pairs against density: how sparse a concept can be on the toy model (docs/research/sparsity.md).

Discovery as `cones toy validate --quick` runs it: the first six toy subjects, six renders alone on
context prompts and twelve captioned scene photos, word scope. Each setting is one discovery objective;
every setting's masks are judged on the selection seeds (choose there) and on the report seeds (quote
those), with validate's lines: single hit, context, crosstalk and both subjects of a pair present.

    python -m experiments.sparsity_curve --out docs/research/sparsity-curve.jsonl
    python -m experiments.sparsity_curve --settings '[{"objective": "gate", "density": 0.01}]' --n-report 48
    python -m experiments.sparsity_curve --plot docs/research/sparsity-curve.jsonl   # writes the .png beside it
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cones_lab.compare import sd15_bytes_per_concept
from cones_lab.validate import ValidateParams, discover_subjects, mask_lines
from cones_tasks.loading import load_diffusion_model
from cones_tasks.neurons.objectives import parse_discovery
from cones_tasks.neurons.space import NeuronSpace
from cones_tasks.toyworld.assets import TOY_MODEL_DIR
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS

# From dense to sparse: the `fit` default (no budget), then gates held at falling densities.
DEFAULT_SETTINGS = (
    {"objective": "fit"},
    {"objective": "gate", "density": 0.05, "learning_rate": 0.05},
    {"objective": "gate", "density": 0.025, "learning_rate": 0.05},
    {"objective": "gate", "density": 0.01, "learning_rate": 0.05},
    {"objective": "gate", "density": 0.003, "learning_rate": 0.05},
)


def lines(model, subjects, masks, space, params: ValidateParams, *, seed: int, n: int) -> dict:
    found = mask_lines(model, judge, subjects, masks, space, "token", params, seed=seed, n=n)
    return {
        "n": n, "seed": seed, "single": found["single"]["hit_masked"], "context": found["context"],
        "crosstalk": found["crosstalk"], "multi2": found["multi"]["2"],
        "multi2_per_subject": found["multi_detail"]["2"]["per_subject"],
    }


def run_setting(model, subjects, setting: dict, params: ValidateParams, *, n_select: int, n_report: int) -> dict:
    discovery = parse_discovery(setting)
    started = time.perf_counter()
    masks = discover_subjects(model, subjects, discovery, params)
    discovery_s = time.perf_counter() - started
    space = NeuronSpace.from_unet(model.unet, attention=discovery.attention)
    return {
        "setting": setting,
        "neuron_fraction": float(np.mean([m.fraction for m in masks.values()])),
        "bytes_per_concept": float(np.mean([len(m.to_bytes()) for m in masks.values()])),
        "sd15_bytes_per_concept": float(np.mean([sd15_bytes_per_concept("cones", fraction=m.fraction) for m in masks.values()])),
        "discovery_s_per_subject": discovery_s / len(subjects),
        "select": lines(model, subjects, masks, space, params, seed=params.select_seed, n=n_select),
        "report": lines(model, subjects, masks, space, params, seed=params.report_seed, n=n_report),
    }


def plot(jsonl: str) -> str:
    """The curve of a JSONL of rows (report seeds): single hit, context and pairs against the fraction shut."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((json.loads(line) for line in open(jsonl)), key=lambda r: r["neuron_fraction"])
    series: dict[str, list[dict]] = {}  # one line per setting that differs only in its density
    for r in rows:
        rest = {k: v for k, v in r["setting"].items() if k != "density"}
        series.setdefault(", ".join(f"{k} {v}" for k, v in sorted(rest.items())), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0), sharey=True)
    for ax, (key, title) in zip(axes, (("single", "single hit"), ("context", "context"), ("multi2", "pairs, both present"))):
        for name, members in series.items():
            x = [100 * r["neuron_fraction"] for r in members]
            y = [r["report"][key] for r in members]
            se = [np.sqrt(v * (1 - v) / r["report"]["n"]) for v, r in zip(y, members)]
            ax.errorbar(x, y, yerr=se, marker="o", capsize=3, label=name)
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_xlabel("K/V weights shut per concept (%)")
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel(f"judged rate, report seeds (n = {rows[0]['report']['n']}, ±1 SE)")
    axes[2].legend(loc="lower right", fontsize=7)
    ax = axes[0]
    fig.suptitle("Toy model (6 subjects): hit rates against the fraction of K/V weights a concept shuts")
    out = jsonl.rsplit(".", 1)[0] + ".png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=None, help="JSON list of discovery objectives (docs/config.md; default: the curve)")
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--n-select", type=int, default=24)
    parser.add_argument("--n-report", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="append one JSON line per setting here")
    parser.add_argument("--layout", default="null", help="attention control at generation, a Layout as JSON "
                        "(cones_tasks.neurons.layout; default: off, as the curve was first measured)")
    parser.add_argument("--plot", default=None, help="only plot this JSONL (a PNG beside it) and exit")
    args = parser.parse_args(argv)
    if args.plot:
        print(plot(args.plot))
        return
    torch.set_num_threads(args.threads)
    settings = json.loads(args.settings) if args.settings else DEFAULT_SETTINGS
    model = load_diffusion_model(TOY_MODEL_DIR)
    subjects = TOY_SUBJECTS[: args.subjects]
    # validate --quick's sampling: 20 steps, guidance 3, 12 scene photos, select seeds 1, report seeds 2
    params = ValidateParams(sample_steps=20, scene_references=12, multi_sizes=(2,), ceilings=False,
                            reversed_order=False, strategies=("token",), layout=json.loads(args.layout))
    for setting in settings:
        row = run_setting(model, subjects, setting, params, n_select=args.n_select, n_report=args.n_report)
        row["subjects"] = [s.id for s in subjects]
        row["layout"] = json.loads(args.layout)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
