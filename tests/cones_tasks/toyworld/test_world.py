"""Renderer, captions, tokenizer and judge (issue #2)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import CLIPTokenizer

from cones_tasks.toyworld.captions import full_caption, random_caption
from cones_tasks.toyworld.evaluate import eval_judge
from cones_tasks.toyworld.judge import judge
from cones_tasks.toyworld.render import random_scene, render
from cones_tasks.toyworld.subjects import TOY_SUBJECTS, ToySubject, write_subject_folders
from cones_tasks.toyworld.tokenizer import MAX_LENGTH, write_tokenizer
from cones_tasks.toyworld.world import RESOLUTION, ObjectSpec, vocabulary


def _renders(seed: int, n: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([render(random_scene(rng, 1 + i % 4)) for i in range(n)])


def test_renderer_is_deterministic_under_a_seed():
    assert np.array_equal(_renders(7), _renders(7))
    assert not np.array_equal(_renders(7), _renders(8))
    assert _renders(7).shape == (20, RESOLUTION, RESOLUTION, 3)


def test_objects_never_overlap_and_fill_a_third_of_a_single_scene():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4):
        for _ in range(50):
            scene = random_scene(rng, n)
            assert len(judge(render(scene)).objects) == n
    single = random_scene(np.random.default_rng(1), 1).objects[0]
    assert 2 * single.radius >= 0.35 * RESOLUTION


def test_reading_order_puts_the_first_named_object_left_or_above_the_next():
    rng = np.random.default_rng(4)
    half = RESOLUTION / 2
    for n in (2, 3, 4):
        for _ in range(100):
            objects = random_scene(rng, n, order="reading").objects
            if n == 2:  # side by side or stacked: the first is left of, or above, the second
                first, second = objects
                assert first.cx < half <= second.cx or first.cy < half <= second.cy
            else:  # quadrants, read row by row
                cells = [(o.cy // half, o.cx // half) for o in objects]
                assert cells == sorted(cells) and len(set(cells)) == n


def test_left_to_right_puts_two_objects_side_by_side_first_on_the_left():
    rng = np.random.default_rng(5)
    for _ in range(100):
        first, second = random_scene(rng, 2, order="left-to-right").objects
        assert first.cx < RESOLUTION / 2 <= second.cx


def test_object_order_changes_placement_only():
    random_order = [random_scene(np.random.default_rng(s), 2) for s in range(30)]
    # same attributes, sizes and backgrounds (the same random draws); some pairs trade places
    strip = lambda sc: (sc.background, [(o.shape, o.color, o.pattern, o.radius) for o in sc.objects])  # noqa: E731
    for order in ("reading", "left-to-right"):
        ordered = [random_scene(np.random.default_rng(s), 2, order=order) for s in range(30)]
        assert [strip(a) for a in random_order] == [strip(b) for b in ordered]
        assert any(a.objects[0].cx != b.objects[0].cx or a.objects[0].cy != b.objects[0].cy for a, b in zip(random_order, ordered))
    with pytest.raises(ValueError, match="random.*reading"):
        random_scene(np.random.default_rng(0), 2, order="clockwise")


def test_captions_range_from_full_to_class_word():
    rng = np.random.default_rng(0)
    scene = random_scene(rng, 2)
    assert full_caption(scene).count(" and ") == 1 and full_caption(scene).endswith(f"on {scene.background}")
    partial = {random_caption(rng, random_scene(rng, 1), p_full=0.0) for _ in range(300)}
    assert {"a circle", "a square", "a triangle"} <= partial


def test_tokenizer_keeps_every_toy_word_whole():
    from tempfile import TemporaryDirectory

    with TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(tmp))
    for word in vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    longest = " and ".join(["a striped yellow triangle"] * 4) + " on night"
    assert len(tokenizer(longest).input_ids) <= MAX_LENGTH


def test_judge_meets_issue_accuracy_on_fresh_renders():
    """500 renders per object count: every object of a three- or four-object scene read right ≥ 0.99 of the time."""
    result = eval_judge(n=500, seed=3)
    assert min(result["single"].values()) >= 0.99
    assert min(result["pair"].values()) >= 0.97
    assert result["unreadable"] <= 5
    for count in ("3", "4"):
        assert result["counts"][count]["all"] >= 0.99, result["counts"][count]
        assert result["counts"][count]["objects_found"] >= 0.99


def test_crowds_at_the_shipped_models_size_are_not_all_readable():
    """Why three and four objects grew to 3.0–3.5 px: at 2.6–3.2 some circles are a square's very pixels."""
    from cones_tasks.toyworld.judge import _shape
    from cones_tasks.toyworld.render import CROWD_RADIUS, SMALL_CROWD_RADIUS, check_crowd_radius, shape_mask

    rng = np.random.default_rng(0)

    def misread_circles(lo: float, hi: float) -> int:  # circles placed in an 8 px quadrant, as place_objects does
        wrong = 0
        for _ in range(600):
            r = rng.uniform(lo, hi)
            cx, cy = rng.uniform(r + 0.5, 8 - r - 0.5, size=2)
            mask = shape_mask("circle", cx, cy, r)
            rows, cols = np.nonzero(mask)
            wrong += _shape(mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]) != "circle"
        return wrong

    assert misread_circles(*SMALL_CROWD_RADIUS) >= 10  # ~4 %
    assert misread_circles(*CROWD_RADIUS) == 0
    with pytest.raises(ValueError, match="quadrants"):
        check_crowd_radius((3.0, 3.8))


def test_judge_calls_noise_unreadable_instead_of_guessing():
    noise = np.random.default_rng(0).integers(0, 256, size=(RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    assert judge(noise).unreadable
    grey = np.full((RESOLUTION, RESOLUTION, 3), 128, np.uint8)
    assert judge(grey).unreadable


def test_subjects_write_png_folders(tmp_path):
    from PIL import Image

    folders = write_subject_folders(tmp_path, n=5)
    assert set(folders) == {s.id for s in TOY_SUBJECTS}
    for subject_id, folder in folders.items():
        subject = ToySubject.parse(subject_id)
        files = sorted(folder.glob("*.png"))
        assert len(files) == 5
        for f in files:
            verdict = judge(np.asarray(Image.open(f).convert("RGB")))
            assert verdict.has(shape=subject.shape, color=subject.color, pattern=subject.pattern)


def test_bad_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        ObjectSpec("hexagon", "red", "plain", 8, 8, 4)
    with pytest.raises(ValueError, match="striped-yellow-triangle"):
        ToySubject.parse("yellow/triangle")


def test_scene_references_show_the_subject_beside_another_object_named_in_order():
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS, scene_references

    subject = TOY_SUBJECTS[1]  # dotted-blue-circle
    images, captions = scene_references(subject, n=6, seed=0)
    assert images.shape == (6, 16, 16, 3) and len(captions) == 6
    for i, (image, caption) in enumerate(zip(images, captions)):
        verdict = judge(image)
        assert len(verdict.objects) == 2 and caption.split().count(subject.shape) == 1
        left, right = sorted(verdict.objects, key=lambda o: o.cx)
        mine = left if i % 2 == 0 else right  # the subject alternates sides, and the caption follows left to right
        assert (mine.shape, mine.color, mine.pattern) == (subject.shape, subject.color, subject.pattern)
        assert caption.startswith(f"a {subject.shape} and ") == (i % 2 == 0)
        other = right if i % 2 == 0 else left  # named by its class word alone, as a combination's prompt names it
        assert caption == " and ".join(f"a {o.shape}" for o in (left, right)) + f" on {verdict.background}"
        assert other.shape != subject.shape
    again, _ = scene_references(subject, n=6, seed=0)
    assert (again == images).all()  # seeded
    _, described = scene_references(subject, n=6, seed=0, others="described")
    assert described[0].startswith(f"a {subject.shape} and a ") and len(described[0].split()) == len(captions[0].split()) + 2


def test_crowded_scene_references_name_the_subject_at_every_place():
    from cones_tasks.toyworld.judge import judge
    from cones_tasks.toyworld.render import RESOLUTION
    from cones_tasks.toyworld.subjects import TOY_SUBJECTS, scene_references

    subject = TOY_SUBJECTS[0]  # striped-yellow-triangle
    images, captions = scene_references(subject, n=12, seed=0, objects=(2, 3, 4))
    places = set()
    for i, (image, caption) in enumerate(zip(images, captions)):
        count = (2, 3, 4)[i % 3]
        verdict = judge(image)
        assert len(verdict.objects) == count and caption.split().count(subject.shape) == 1
        # named as one reads the image: left to right, then (crowds, one per quadrant) top row before bottom
        read = sorted(verdict.objects, key=lambda o: (count > 2 and o.cy >= RESOLUTION / 2, o.cx))
        assert caption == " and ".join(f"a {o.shape}" for o in read) + f" on {verdict.background}"
        place = [o.shape for o in read].index(subject.shape)
        mine = read[place]
        assert (mine.shape, mine.color, mine.pattern) == (subject.shape, subject.color, subject.pattern)
        assert place == (i // 3) % count
        places.add((count, place))
    assert places == {(2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (4, 0), (4, 1), (4, 2), (4, 3)}
    with pytest.raises(ValueError, match="2 to 4 objects"):
        scene_references(subject, n=2, objects=(1,))


def test_judgement_shows_a_subject_in_its_shape_or_carried_onto_another_class():
    from cones_tasks.toyworld.render import place_objects
    from cones_tasks.toyworld.world import Scene

    yellow = ToySubject("triangle", "yellow", "striped")
    # A striped yellow square beside a plain green circle: the triangle subject's look, on a square.
    objects = place_objects(np.random.default_rng(3), [("square", "yellow", "striped"), ("circle", "green", "plain")],
                            order="left-to-right")
    verdict = judge(render(Scene("snow", objects)))
    assert not verdict.unreadable
    assert not verdict.shows(yellow)  # no triangle drawn
    assert verdict.shows(yellow, on="square")  # its colour and pattern on the square
    assert not verdict.shows(yellow, on="circle")
    assert verdict.shows(ToySubject("circle", "green", "plain"))
    noise = np.random.default_rng(0).integers(0, 256, size=(RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    assert not judge(noise).shows(yellow)
