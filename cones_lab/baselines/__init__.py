"""Baselines a user would pick instead of Cones, on the same parameters and the same data (docs/baselines.md).

- `dense_kv`: Custom Diffusion's recipe (Kumari et al., CVPR 2023): fine-tune the cross-attention
  K/V weights densely with AdamW on the subject's references under its class prompt, optionally
  with prior preservation. A concept is ΔW for every K/V matrix.
- `lora`: a low-rank adapter (Hu et al., 2021) on the same K/V projections, through peft.

Both find their parameters the way Cones does (cones_tasks.neurons.space: diffusers `Attention`
modules by type, then `to_k` / `to_v`), so they work on any diffusers UNet, and both leave the
base model's weights bit for bit as they were. Concepts serialise to safetensors bytes; where the
bytes go is the caller's business.
"""
