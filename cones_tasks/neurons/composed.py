"""Composed references: the subject's own photos beside another object of its class (docs/composition.md).

A word-scoped edit learned on photos of the subject alone has no reason to stay at its own
object: in a single-subject prompt every image position may read the word. In a two-subject
prompt that edit then paints the other object too, or moves its own (measured on the toy model:
a circle's edit drew the left object as a square and put its colour on the right one). So part
of discovery's batches are two-object images: the subject on one side, on the other an object
the base model drew for the bare class prompt, and the prompt names the class twice ("a dog and
a dog"); the edit sits at the mention on the subject's side. The other object stays the base
model's, so the edit is pushed to act where its subject is and nowhere else.

Images are composed by shrinking both photos by `scale`, cropping each to a half-width window
around its object (the pixels that differ most from the photo's border colour), and placing the
two windows side by side on the first photo's border colour. Left to right follows the prompt's
order, which is how two-object scenes are usually described (and how the toy model was trained).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cones_tasks.combinations import class_phrase

__all__ = ["compose_side_by_side", "composed_prompts"]


def _border_colour(image: torch.Tensor) -> torch.Tensor:
    """Median colour of the outermost pixels of [3, H, W]: the background, for a photo of one object."""
    edge = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)  # [3, 2H + 2W]
    return edge.median(dim=1).values


def _half_window(image: torch.Tensor, width: int) -> torch.Tensor:
    """The `width`-column window of [3, H, W] centred on its object's mass (distance from the border colour)."""
    weight = (image - _border_colour(image)[:, None, None]).norm(dim=0).sum(dim=0)  # [W]
    cols = torch.arange(image.shape[-1], dtype=torch.float32)
    centre = float((weight * cols).sum() / weight.sum()) if float(weight.sum()) > 0 else image.shape[-1] / 2
    left = int(round(centre - width / 2))
    left = min(max(left, 0), image.shape[-1] - width)
    return image[:, :, left : left + width]


def compose_side_by_side(left: np.ndarray, right: np.ndarray, *, scale: float = 0.6) -> np.ndarray:
    """uint8 [H, W, 3] × 2 -> uint8 [H, W, 3]: both shrunk by `scale`, half a frame each, on the left's border colour."""
    if left.shape != right.shape or left.ndim != 3 or left.shape[-1] != 3:
        raise ValueError(f"compose two uint8 [H, W, 3] images of one size; got {left.shape} and {right.shape}")
    h, w = left.shape[:2]
    half = w // 2
    canvas_colour = _border_colour(torch.from_numpy(left).permute(2, 0, 1).float())
    canvas = canvas_colour[:, None, None].expand(3, h, w).clone()
    for image, x0 in ((left, 0), (right, half)):
        x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
        small = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)[0]
        small_h, small_w = small.shape[-2:]
        if small_w < half:  # nothing to crop: pad the sides with the image's own border colour
            pad = _border_colour(small)[:, None, None].expand(3, small_h, half).clone()
            pad[:, :, (half - small_w) // 2 : (half - small_w) // 2 + small_w] = small
            small = pad
        window = _half_window(small, half)
        top = (h - small_h) // 2
        canvas[:, top : top + small_h, x0 : x0 + half] = window
    return canvas.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def composed_prompts(prompt: str, class_word: str) -> tuple[str, str]:
    """The prompt of a composed image: `prompt`'s class phrase doubled, "a dog on grass" -> "a dog and a dog on grass".

    Returned twice, for the subject on the left (first mention) and on the right (second mention).
    """
    phrase = class_phrase(class_word)
    if phrase not in prompt:
        raise ValueError(f"prompt {prompt!r} does not contain the class phrase {phrase!r}; composed references need it")
    doubled = prompt.replace(phrase, f"{phrase} and {phrase}", 1)
    return doubled, doubled
