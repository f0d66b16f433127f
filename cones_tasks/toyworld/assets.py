"""Where the shipped toy models live: cones_tasks/toyworld/shipped/, package data of the wheel, so an
installed `cones` has the same toy model and toy CLIP as a checkout (`cones toy assets` prints the paths)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "shipped"
TOY_MODEL_DIR = ASSETS / "toy-model"
TOY_CLIP_DIR = ASSETS / "toy-clip"


def toy_clip_weights() -> Path:
    from cones_tasks.toyworld.train_clip import WEIGHTS_FILE  # here, not above: train_clip loads torch; `cones toy assets` must not

    return TOY_CLIP_DIR / WEIGHTS_FILE
