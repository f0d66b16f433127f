"""The combination step's picture sources (cones_lab.pair_pictures), as validate and the pairs experiment use them."""

from __future__ import annotations

import numpy as np
import pytest

from cones_lab.pair_pictures import judge_accepts, rendered_pictures, together
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.subjects import TOY_SUBJECTS

PAIR = tuple(TOY_SUBJECTS[:2])


def test_rendered_pictures_are_the_sources_own_and_refuse_self():
    images, prompts, named = rendered_pictures("together", PAIR, 4, scene_photos=0, reference_images=2, seed=3)
    expected = together(PAIR, 4, seed=3)
    assert np.array_equal(images, expected[0]) and prompts == expected[1] and named == expected[2]
    with pytest.raises(ValueError, match="self_generated"):
        rendered_pictures("self", PAIR, 4, scene_photos=0, reference_images=2)


def test_judge_accepts_both_subjects_on_the_asked_background_only():
    images, prompts, named = together(PAIR, 2)
    accept = judge_accepts(judge)
    shown = tuple(PAIR[j] for j in named[0])
    background = prompts[0].rsplit(" on ", 1)[1]
    other = "night" if background == "snow" else "snow"
    assert accept(images[0], shown, background)
    assert not accept(images[0], shown, other)
    assert not accept(images[0], (*shown, TOY_SUBJECTS[2]), background)  # a subject not drawn
