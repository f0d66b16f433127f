"""Tiny, randomly initialised Stable Diffusion pipelines of each family, built locally (no hub), for CPU tests.

- sd15: one CLIP text encoder, epsilon prediction (diffusers' own tiny-test shapes).
- sd2: a larger text encoder (width 48 vs 32, the ratio of SD-2's 1024 to SD-1's 768 is about this),
  linear projections in the transformer blocks, per-level head dims, v-prediction.
- sdxl: two text encoders (the second with a projection: pooled embeddings), added time ids.

The tokenizer is a real CLIPTokenizer whose BPE merges build each test word into one token
(cones_tasks.toyworld.tokenizer.build_vocab_and_merges), so prompts like "a photo of a dog" tokenize
word by word.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "photo", "of", "the", "my", "dog", "cat", "mug", "and", "on", "in", "beach", "snow", "park", "red", "blue",
         "teddy", "bear"]
MAX_LENGTH = 12
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def write_tokenizer(folder: Path, *, pad: str = EOS):
    from transformers import CLIPTokenizer

    from cones_tasks.toyworld.tokenizer import build_vocab_and_merges

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(WORDS + ([pad] if pad != EOS else []))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token=BOS, eos_token=EOS,
                         unk_token=EOS, pad_token=pad if pad == EOS else f"{pad}</w>", model_max_length=MAX_LENGTH)


def _text_config(vocab: int, hidden: int, *, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, projection_dim=projection or hidden)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def sd15(tmp: Path, seed: int = 0):
    """StableDiffusionPipeline: 16 px images (8 px latents), text width 32."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = write_tokenizer(tmp / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), 32))
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sd2(tmp: Path, seed: int = 0):
    """StableDiffusionPipeline shaped like SD-2.x: wider text encoder, linear projections, v-prediction."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = write_tokenizer(tmp / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
        attention_head_dim=(2, 4), use_linear_projection=True,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), 48))
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                              prediction_type="v_prediction")
    return StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl(tmp: Path, seed: int = 0):
    """StableDiffusionXLPipeline: two text encoders (32 + 32 → 64-wide states), pooled embeddings, time ids.

    The second tokenizer pads with "!" as SDXL's does: token rows must still agree between the two.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = write_tokenizer(tmp / "tokenizer")
    tokenizer_2 = write_tokenizer(tmp / "tokenizer_2", pad="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 16,
        cross_attention_dim=64,
    )
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), 32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer_2), 32, projection=16))
    scheduler = EulerDiscreteScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


FAMILIES = {"sd15": sd15, "sd2": sd2, "sdxl": sdxl}


def saved(family: str, folder: Path, seed: int = 0) -> Path:
    """The family's tiny pipeline written as a diffusers model folder (save_pretrained, safetensors)."""
    pipe = FAMILIES[family](folder.parent / f"{folder.name}-tokenizers", seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def subject_images(n: int = 4, seed: int = 0, size: int = 16):
    """n uint8 [size, size, 3] images of one made-up subject: a coloured square on noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, size, size, 3), dtype=np.uint8)
    colour = rng.integers(120, 255, 3)
    images[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = colour
    return images
