"""The toy text-to-image model's anatomy (docs/research/toy-model.md): Stable Diffusion's, shrunk.

- UNet: diffusers `UNet2DConditionModel`, pixel space (no VAE), two levels (16 and 8 px) with
  cross-attention at both and in the mid block — the K/V projections are where concept
  neurons live (Cones §3.1).
- Text encoder: a transformers `CLIPTextModel`, random and **frozen**. The feasibility runs
  (docs/research/toy-model.md) found that a frozen text side lets conditioning emerge in a few hundred CPU steps,
  while a jointly trained one reached only 0.59 colour accuracy. Frozen is also what SD does.
- Scheduler: DDPM with a cosine schedule (better than linear at 16 px, where a linear schedule
  destroys the image too early).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cones_tasks.toyworld.tokenizer import MAX_LENGTH, build_vocab_and_merges
from cones_tasks.toyworld.world import RESOLUTION, vocabulary

TEXT_WIDTH = 64


def build_unet(*, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=RESOLUTION,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=32,
        norm_num_groups=8,
    )


def build_text_encoder(*, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    vocab, _ = build_vocab_and_merges(vocabulary())
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = CLIPTextModel(config)
    # A frozen random encoder is useful only if tokens are far apart: word embeddings at
    # unit scale, positions at half scale (they let cross-attention bind "red" to the
    # "circle" next to it in two-object prompts), the layer's own weights left small so
    # each token's state stays mostly its own word.
    embeddings = getattr(model, "text_model", model).embeddings  # transformers 4 nests, 5 does not
    with torch.no_grad():
        embeddings.token_embedding.weight.normal_(0.0, 1.0)
        embeddings.position_embedding.weight.normal_(0.0, 0.5)
    model.requires_grad_(False)
    return model.eval()


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
    )
