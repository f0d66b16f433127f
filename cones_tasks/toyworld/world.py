"""The toy world's vocabulary: what can appear in a scene and how it is named.

16×16 px RGB images (README, "Why 16 px"): a CPU-trained pixel-space model learns
prompts at this size in minutes; objects cover ≥ 35 % of a single-object image.
"""

from __future__ import annotations

from dataclasses import dataclass

RESOLUTION = 16

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 205, 40),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "snow": (235, 235, 235),
    "night": (25, 25, 40),
}
# Pattern marks are the object's colour darkened: distinct from both backgrounds
# and from every other object colour, so the judge can attribute them.
PATTERN_DARKEN = 0.4


def pattern_color(color: str) -> tuple[int, int, int]:
    r, g, b = COLORS[color]
    return (round(r * PATTERN_DARKEN), round(g * PATTERN_DARKEN), round(b * PATTERN_DARKEN))


@dataclass(frozen=True)
class ObjectSpec:
    """One object in a scene: what it is and where (pixel centre, half-size)."""

    shape: str
    color: str
    pattern: str
    cx: float
    cy: float
    radius: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; choose one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; choose one of {tuple(COLORS)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; choose one of {PATTERNS}")


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose one of {tuple(BACKGROUNDS)}")
        if not 1 <= len(self.objects) <= 4:
            raise ValueError(f"a scene holds 1–4 objects, got {len(self.objects)}")


def vocabulary() -> list[str]:
    """Every word a caption can use, in a stable order (the tokenizer's vocabulary)."""
    words = ["a", "and", "on", *SHAPES, *COLORS, *PATTERNS, *BACKGROUNDS, "photo", "of"]
    return list(dict.fromkeys(words))
