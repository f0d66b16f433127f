"""Where the shipped toy models live (in the repository's assets/ folder)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
TOY_MODEL_DIR = ASSETS / "toy-model"
TOY_CLIP_DIR = ASSETS / "toy-clip"


def toy_clip_weights() -> Path:
    from cones_tasks.toyworld.train_clip import WEIGHTS_FILE

    return TOY_CLIP_DIR / WEIGHTS_FILE
