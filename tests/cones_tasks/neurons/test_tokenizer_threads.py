"""Tokenizing from several threads at once: a fast tokenizer's padding is state on the shared object."""

from __future__ import annotations

import threading

from cones_tasks.neurons.words import _prompt_ids, word_rows, word_token_ids
from cones_tasks.toyworld.assets import TOY_MODEL_DIR


def test_word_ids_and_prompt_encoding_in_two_threads_never_see_each_others_padding():
    from cones_tasks.loading import load_diffusion_model

    model = load_diffusion_model(TOY_MODEL_DIR)
    expected = word_token_ids(model.tokenizer, "circle")
    seen, stop = [], threading.Event()

    def encode() -> None:
        while not stop.is_set():
            model.encode_prompts(["a circle and a triangle", "a square"])  # the pipeline's padded encoding
            _prompt_ids(model.tokenizer, "a square and a circle")  # padded to max_length

    worker = threading.Thread(target=encode)
    worker.start()
    try:
        for _ in range(2000):
            seen.append(word_token_ids(model.tokenizer, "circle"))
            assert word_rows(model.tokenizer, "a circle and a triangle", ["circle", "triangle"]) == [(2,), (5,)]
    finally:
        stop.set()
        worker.join()
    assert all(ids == expected for ids in seen), {len(ids) for ids in seen}
