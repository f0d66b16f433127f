"""The toy model's training data, one seeded batch per step (issue #3).

Step `s` of a run with seed `k` always sees the batch drawn from `(k, s)`: images, caption token
ids, noise and timesteps. That makes a run's data independent of how many DataLoader workers
render it (the GPU run uses many, a CPU run none) and of where a resumed run restarts.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from cones_tasks.toyworld.batches import random_batch
from cones_tasks.toyworld.tokenizer import MAX_LENGTH


@lru_cache(maxsize=1)
def _tokenizer():
    import tempfile

    from transformers import CLIPTokenizer

    from cones_tasks.toyworld.tokenizer import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_tokenizer(tmp))


@lru_cache(maxsize=100_000)
def _ids(caption: str) -> tuple[int, ...]:
    # The slow CLIPTokenizer costs ~2 ms a caption; the toy world has a few thousand captions.
    return tuple(_tokenizer()(caption, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids)


def caption_ids(captions: list[str]) -> torch.Tensor:
    """Token ids [B, MAX_LENGTH] from the shipped toy tokenizer, padded as the loader pads."""
    return torch.tensor([_ids(c) for c in captions], dtype=torch.long)


class TrainingBatches(torch.utils.data.Dataset):
    """Index = step: (uint8 images [B,H,W,3], ids [B,T], noise [B,3,H,W], timesteps [B])."""

    def __init__(self, seed: int, batch_size: int, num_train_timesteps: int, *, p_empty: float):
        self.seed, self.batch_size, self.num_train_timesteps, self.p_empty = seed, batch_size, num_train_timesteps, p_empty

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        images, captions = random_batch(rng, self.batch_size, p_empty=self.p_empty)
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn((self.batch_size, images.shape[-1], *images.shape[1:3]), generator=g)
        t = torch.randint(0, self.num_train_timesteps, (self.batch_size,), generator=g)
        return torch.from_numpy(images), caption_ids(captions), noise, t
