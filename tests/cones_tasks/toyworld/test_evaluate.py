"""`cones toy eval-model`'s counts lines: full captions of 1–4 objects, read by the judge."""

from __future__ import annotations

import numpy as np
import pytest

from cones_tasks.toyworld.captions import full_caption
from cones_tasks.toyworld.evaluate import counts_lines, eval_model, spelled_out_scenes
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.render import render
from cones_tasks.toyworld.world import Scene


def test_counts_lines_score_renders_of_their_own_captions_right_and_a_missing_object_wrong():
    scenes = spelled_out_scenes(np.random.default_rng(0), 25)
    assert [len(s.objects) for k in "1234" for s in scenes[k]] == [int(k) for k in "1234" for _ in range(25)]
    assert full_caption(scenes["3"][0]).count(" and ") == 2  # the training's full caption, objects in scene order
    # the renderer as a perfect model: every named object drawn
    rates, detail = counts_lines(scenes, [judge(render(s)) for k in scenes for s in scenes[k]])
    assert rates == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}
    assert all(d["n"] == 25 and d["objects_found"] == 1.0 for d in detail.values())
    # the last named object left out of the image: no scene of two or more is all right
    dropped = [judge(render(Scene(s.background, s.objects[:-1] or s.objects))) for k in scenes for s in scenes[k]]
    rates, detail = counts_lines(scenes, dropped)
    assert rates["1"] == 1.0 and rates["2"] == rates["3"] == rates["4"] == 0.0
    assert abs(detail["4"]["per_object"] - 0.75) < 1e-9 and detail["4"]["objects_found"] == 0.0


def test_eval_model_reports_counts_beside_the_earlier_lines_and_a_line_alone_reads_the_same_images():
    from cones_tasks.loading import load_diffusion_model
    from cones_tasks.toyworld.assets import TOY_MODEL_DIR

    model = load_diffusion_model(TOY_MODEL_DIR)
    full = eval_model(model, n=2, steps=4, seed=1, progress=False)
    assert {"single", "class_only", "pair"} <= set(full)
    assert set(full["counts"]) == {"1", "2", "3", "4"} and all(0.0 <= r <= 1.0 for r in full["counts"].values())
    assert all(d["n"] == 2 for d in full["counts_detail"].values())
    alone = eval_model(model, n=2, steps=4, seed=1, progress=False, lines=("counts",))
    assert set(alone) == {"counts", "counts_detail"} and alone["counts_detail"] == full["counts_detail"]
    with pytest.raises(ValueError, match="unknown eval lines"):
        eval_model(model, n=2, lines=("quads",))
