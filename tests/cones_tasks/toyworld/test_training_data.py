"""The toy model's training data and frozen text encoders (issue #3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cones_tasks.toyworld.batches import random_batch
from cones_tasks.toyworld.training_batches import TrainingBatches, caption_ids, sequential_batches


def _tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from cones_tasks.toyworld.tokenizer import write_tokenizer

    return CLIPTokenizer.from_pretrained(write_tokenizer(tmp_path / "tokenizer"))


def test_caption_ids_are_what_the_shipped_tokenizer_gives(tmp_path):
    """The lookup that replaced the slow tokenizer on the training path must not change a single id."""
    tokenizer = _tokenizer(tmp_path)
    _, captions = random_batch(np.random.default_rng(5), 200, p_empty=0.1)
    captions += ["a photo of a dotted green square on night", "A  Red circle", "a purple circle", ""]
    expected = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    assert caption_ids(captions).tolist() == expected


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_per_step_batches_depend_on_the_step_alone_not_on_workers():
    batches = TrainingBatches(seed=3, batch_size=6, num_train_timesteps=1000, p_empty=0.1)
    steps = [7, 2, 9]
    inline = list(torch.utils.data.DataLoader(batches, batch_size=None, sampler=steps, num_workers=0))
    in_workers = list(torch.utils.data.DataLoader(batches, batch_size=None, sampler=steps, num_workers=2))
    assert all(_same(a, b) for a, b in zip(inline, in_workers, strict=True))
    assert _same(batches[9], inline[2]) and not _same(batches[2], batches[7])
    images, ids, noise, t = batches[2]
    assert images.shape == (6, 16, 16, 3) and ids.shape == (6, 24) and noise.shape == (6, 3, 16, 16) and t.shape == (6,)


def test_sequential_stream_restarts_from_the_step_it_is_seeded_by():
    full = list(sequential_batches(0, 0, 3, 4, 1000, p_empty=0.1))
    again = list(sequential_batches(0, 0, 3, 4, 1000, p_empty=0.1))
    resumed = list(sequential_batches(0, 2, 1, 4, 1000, p_empty=0.1))
    assert all(_same(a, b) for a, b in zip(full, again, strict=True))
    assert not _same(full[2], resumed[0])  # a resumed segment re-seeds; `make toy-model` replays the cuts


def test_training_params_name_the_fix():
    from cones_tasks.toyworld.train_model import TrainModelParams

    with pytest.raises(ValueError, match="workers=0"):
        TrainModelParams(data_stream="sequential", workers=2)
    with pytest.raises(ValueError, match="random.*toy-clip"):
        TrainModelParams(text_encoder="bert")
    with pytest.raises(ValueError, match="sum to 1"):
        TrainModelParams(object_counts={1: 0.5, 2: 0.2})
    with pytest.raises(ValueError, match="counts 1–4"):
        TrainModelParams(object_counts={5: 1.0})
    with pytest.raises(ValueError, match="random.*reading"):
        TrainModelParams(object_order="diagonal")
    with pytest.raises(ValueError, match="quadrants"):
        TrainModelParams(crowd_radius=(3.0, 4.0))


def test_object_counts_and_crowd_radius_parse_from_the_command_line():
    from cones_tasks.toyworld.train_model import parse_crowd_radius, parse_object_counts

    assert parse_object_counts("1:0.2,2:0.3,3:0.25,4:0.25") == {1: 0.2, 2: 0.3, 3: 0.25, 4: 0.25}
    assert parse_object_counts('{"1": 0.4, "2": 0.6}') == {1: 0.4, 2: 0.6}  # the Makefile's older lines
    with pytest.raises(ValueError, match="count:weight"):
        parse_object_counts("1=0.5,2=0.5")
    assert parse_crowd_radius("2.6,3.2") == (2.6, 3.2)
    with pytest.raises(ValueError, match="low,high"):
        parse_crowd_radius("3")


def test_crowd_radius_sizes_three_and_four_objects_only():
    from cones_tasks.toyworld.render import CROWD_RADIUS, SMALL_CROWD_RADIUS, random_scene

    for n in (1, 2, 3, 4):
        new, small = (random_scene(np.random.default_rng(n), n, crowd_radius=r) for r in (CROWD_RADIUS, SMALL_CROWD_RADIUS))
        same = new == small  # both radius ranges draw the same random numbers: only sizes (and positions within a cell) move
        assert same if n <= 2 else not same
        if n > 2:
            assert all(CROWD_RADIUS[0] <= o.radius <= CROWD_RADIUS[1] for o in new.objects)
            assert all(SMALL_CROWD_RADIUS[0] <= o.radius <= SMALL_CROWD_RADIUS[1] for o in small.objects)
            assert [(o.shape, o.color, o.pattern) for o in new.objects] == [(o.shape, o.color, o.pattern) for o in small.objects]


def test_object_counts_set_the_scene_mix():
    pairs_only = TrainingBatches(seed=0, batch_size=8, num_train_timesteps=1000, p_empty=0.0, object_counts={2: 1.0})
    default = TrainingBatches(seed=0, batch_size=8, num_train_timesteps=1000, p_empty=0.0)
    ids = pairs_only[0][1]
    from cones_tasks.toyworld.training_batches import word_ids

    joins = (ids == word_ids()["and"]).sum(dim=1)
    assert (joins == 1).all()  # every caption names two objects: exactly one "and"
    assert not _same(pairs_only[0], default[0])


def test_toy_clip_text_tower_becomes_a_clip_text_model_with_the_same_outputs(tmp_path):
    """Same function, remapped vocabulary: the pooled end-of-text state, projected, is open_clip's text
    embedding; and a token's state carries the words before it (what pair prompts need to bind)."""
    from safetensors.torch import load_file

    from cones_tasks.loading import load_clip_scorer
    from cones_tasks.toyworld.assets import toy_clip_weights
    from cones_tasks.toyworld.clip_text_encoder import text_encoder_from_toy_clip
    from cones_tasks.toyworld.train_clip import TOY_CLIP_NAME

    encoder = text_encoder_from_toy_clip(toy_clip_weights())
    assert not any(p.requires_grad for p in encoder.parameters())
    captions = ["a striped red circle on snow", "a blue square and a yellow triangle", "a circle", "a red circle"]
    ids = caption_ids(captions)
    with torch.no_grad():
        states = encoder(ids).last_hidden_state
        end = (ids == encoder.config.eos_token_id).int().argmax(-1)
        projection = load_file(toy_clip_weights())["text_projection"].float()
        ours = states[torch.arange(len(captions)), end] @ projection
        scorer = load_clip_scorer(TOY_CLIP_NAME, toy_clip_weights())
        theirs = scorer.model.encode_text(scorer.tokenizer(captions))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # "circle" is token 3 of "a red circle" and token 2 of "a circle": same word, different context
    assert (states[3, 3] - states[2, 2]).norm() > 0.1 * states[2, 2].norm()


def test_toy_clip_conversion_refuses_a_folder_without_its_config(tmp_path):
    from cones_tasks.toyworld.assets import toy_clip_weights
    from cones_tasks.toyworld.clip_text_encoder import text_encoder_from_toy_clip

    lonely = tmp_path / "weights.safetensors"
    lonely.write_bytes(toy_clip_weights().read_bytes())
    with pytest.raises(FileNotFoundError, match="text_cfg"):
        text_encoder_from_toy_clip(lonely)


def test_binding_probe_reads_context_only_where_attention_carries_it():
    """The probe is at chance when attention is cut (each token only its own word), and the toy-CLIP
    tower binds both objects' colours (docs/research/gpu-h100.md: the shipped random encoder loses the second)."""
    from cones_tasks.toyworld.assets import toy_clip_weights
    from cones_tasks.toyworld.clip_text_encoder import text_encoder_from_toy_clip
    from cones_tasks.toyworld.text_probe import probe_binding

    encoder = text_encoder_from_toy_clip(toy_clip_weights())
    bound = probe_binding(encoder)
    assert bound["first_shape"] >= 0.9 and bound["second_shape"] >= 0.9
    with torch.no_grad():
        for layer in getattr(encoder, "text_model", encoder).encoder.layers:  # transformers 4 nests
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    cut = probe_binding(encoder)
    assert cut["first_shape"] <= 0.35 and cut["second_shape"] <= 0.35
