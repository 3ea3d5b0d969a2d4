"""Named training presets: what fits where, with the memory each is expected to need per GPU.

Memory figures are estimates (memory.py) for LoRA rank 32 with cached latents and text embeddings (no
VAE or umT5 resident during training), gradient checkpointing on, batch 1: frozen DiT weights in the
compute dtype + activations of one checkpointed block + LoRA params/grads/Adam states (ZeRO-2
partitions the latter across GPUs); the caching stage before it has its own peak (umT5 + VAE).
They are the budget a preset was sized for, not a measurement.
"""
from __future__ import annotations

import dataclasses

from ..platform.errors import InvalidArgument
from .config import TrainConfig

# Archive clips (16:9 and portrait, 3-45 s) keep their shape and use frames from start to end: each clip goes to
# the size nearest its aspect ratio at the preset's pixel area, as three windows (first, middle, last frames)
# of the longest frame count it fills. Buckets never exceed the preset's size, so its memory budget holds.
_BUCKETS = dict(buckets=True, bucket_max_aspect=2.0, frame_extraction="uniform", frame_windows=3)

PRESETS: dict[str, dict] = {
    "cpu-tiny": dict(
        model="tiny", height=64, width=64, num_frames=9, epochs=2, dataset_repeat=1, learning_rate=1e-3,
        lora_rank=4, lora_alpha=4.0, precision="fp32", device="cpu", deepspeed_stage=0, save_every_steps=4,
        gradient_checkpointing=False, memory_per_gpu_gb=0.0,
        notes="Random tiny Wan (same DiffSynth classes) on the CPU: tests and the demo; ~1 GB RAM.",
    ),
    "cpu-tiny-a14b": dict(
        model="tiny-t2v-a14b", expert="high", height=64, width=64, num_frames=9, epochs=2, learning_rate=1e-3,
        lora_rank=4, lora_alpha=4.0, precision="fp32", device="cpu", save_every_steps=4,
        gradient_checkpointing=False, notes="Tiny two-expert T2V model on the CPU (high-noise expert).",
    ),
    "v100-2gpu-ti2v-5b-480x832x49": dict(
        model="wan2.2-ti2v-5b", height=480, width=832, num_frames=49, epochs=5, dataset_repeat=1,
        learning_rate=1e-4, lr_schedule="cosine", warmup_steps=50, lora_rank=32, lora_alpha=32.0,
        gradient_accumulation_steps=4, gradient_checkpointing=True, precision="fp16", device="cuda",
        deepspeed_stage=2, deepspeed_offload_optimizer=False, num_gpus=2, save_every_steps=200, hang_timeout_s=3600,
        memory_per_gpu_gb=22.0, cache_offload=True, vae_tiled=True, vae_tile_size=16, vae_tile_stride=8,
        **_BUCKETS, bucket_frames="17,33,49",
        notes=("2x V100 32GB. fp16 weights and compute with DeepSpeed ZeRO-2 dynamic loss scaling "
               "(fp16.loss_scale 0): V100 has no bf16 units. umT5 and the VAE run only in the caching "
               "stage, in fp32, so the text encoder never sees fp16; they take turns on the GPU (22.7 GB umT5, "
               "then the VAE on 256x256-pixel tiles). Expected per GPU: ~10 GB DiT weights "
               "(5B fp16) + ~9 GB activations (480x832x49 -> 30x52x13 latent, 5070 tokens, checkpointed) "
               "+ <1 GB LoRA/Adam (partitioned) = ~22 GB of 32 GB."),
    ),
    "v100-8gpu-t2v-a14b-high-480x832x49": dict(
        model="wan2.2-t2v-a14b", expert="high", height=480, width=832, num_frames=49, epochs=5,
        learning_rate=1e-4, lr_schedule="cosine", warmup_steps=50, gradient_accumulation_steps=1,
        precision="fp16", device="cuda", deepspeed_stage=2, deepspeed_offload_optimizer=True, num_gpus=8,
        save_every_steps=200, hang_timeout_s=3600, base_weights_fp8=True, activation_offload=True,
        memory_per_gpu_gb=27.0, cache_offload=True, vae_tiled=True, vae_tile_size=32, vae_tile_stride=16,
        **_BUCKETS, bucket_frames="17,33,49",
        notes=("One A14B expert on a V100 32GB: frozen block weights stored in fp8 e4m3 (14.5 GB instead of "
               "28.6 GB in fp16), optimizer state offloaded to the CPU, the 40 blocks' checkpointed inputs "
               "(8.3 GB at 20,280 tokens: 480x832x49 -> 13x60x104 latent, VAE stride 8) kept in CPU memory; "
               "on the GPU one block is recomputed at a time (~6 GB, and its backward ~5 GB). Caching: umT5 and the "
               "VAE take turns on the GPU, the VAE on 256x256-pixel tiles. Train the low-noise expert with expert=low."),
    ),
    "a100-ti2v-5b-704x1280x121": dict(
        model="wan2.2-ti2v-5b", height=704, width=1280, num_frames=121, epochs=5, learning_rate=1e-4,
        lr_schedule="cosine", warmup_steps=50, lora_rank=32, lora_alpha=32.0, gradient_accumulation_steps=1,
        gradient_checkpointing=True, precision="bf16", device="cuda", deepspeed_stage=2, num_gpus=1,
        save_every_steps=200, hang_timeout_s=3600, memory_per_gpu_gb=48.0, **_BUCKETS, bucket_frames="49,81,121",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        notes=("A100 80GB, bf16 (native). Expected: ~10 GB DiT (bf16) + ~35 GB activations for "
               "704x1280x121 (44x80x31 latent, 27280 tokens, checkpointed) + ~1 GB LoRA/Adam = ~48 GB."),
    ),
}


def preset_config(name: str) -> TrainConfig:
    """A fresh (unvalidated) TrainConfig filled from a preset."""
    if name not in PRESETS:
        raise InvalidArgument(f"unknown training preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(TrainConfig(), **PRESETS[name])


def describe_presets() -> list[dict]:
    """Name, model, size and expected memory of every preset (for `vidtune train presets`)."""
    from .memory import caching_estimate, estimate

    rows = []
    for name, values in PRESETS.items():
        cfg = preset_config(name)
        rows.append({"name": name, "model": cfg.model, "size": f"{cfg.height}x{cfg.width}x{cfg.num_frames}",
                     "precision": cfg.precision, "deepspeed_stage": cfg.deepspeed_stage, "gpus": cfg.num_gpus,
                     "nodes": cfg.num_nodes, "vae_tiled": cfg.vae_tiled,
                     "memory_per_gpu_gb": cfg.memory_per_gpu_gb, "estimate": estimate(cfg).as_dict(),
                     "caching": caching_estimate(cfg).as_dict(),
                     "notes": cfg.notes})
    return rows
