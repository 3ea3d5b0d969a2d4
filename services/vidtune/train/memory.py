"""A model of a training run's peak memory per GPU: weights, LoRA optimizer state, activations by tokens.

Counts come from the DiT itself (built with empty parameters), so every model size is covered:
- frozen weights in the compute dtype, or 1 byte for block Linears stored in fp8;
- LoRA: parameters + gradients in the compute dtype, fp32 master copy and two Adam moments (12 bytes),
  the last two partitioned across GPUs by ZeRO-2 and left on the CPU with optimizer offload;
- activations per DiT block and token: BLOCK_DIM_FACTOR x dim + BLOCK_FFN_FACTOR x ffn_dim elements
  (attention inputs/outputs, norms, LoRA inputs; the FFN's hidden pair). With gradient checkpointing a
  block keeps only its input (dim elements; in CPU memory with activation_offload) and one block is
  recomputed at a time;
- RUNTIME_GB for the CUDA context and allocator slack on a GPU.
The factors were read off the tiny model's saved tensors (tests/train/test_memory.py checks their
slope by tokens); on a V100 the figure is a budget to check with the run's own memory_mb metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .config import TrainConfig

BLOCK_DIM_FACTOR = 24
BLOCK_FFN_FACTOR = 2
RUNTIME_GB = 1.0
GB = 1e9
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass
class MemoryEstimate:
    tokens: int
    weights_gb: float
    lora_gb: float
    activations_gb: float
    runtime_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.lora_gb + self.activations_gb + self.runtime_gb

    def as_dict(self) -> dict:
        return {**{k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "total_gb": round(self.total_gb, 2)}


def dit_shape(cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    """The trained DiT with empty (meta) parameters, and its constructor arguments."""
    from diffsynth.models.wan_video_dit import WanModel

    kwargs = cfg.spec.component(cfg.expert_role).kwargs
    with torch.device("meta"):
        return WanModel(**kwargs), kwargs


def tokens(cfg: TrainConfig) -> int:
    """DiT tokens of one sample: latent frames x latent cells / the 2x2 patch."""
    stride = cfg.spec.vae_stride
    return ((cfg.num_frames - 1) // 4 + 1) * (cfg.height // stride // 2) * (cfg.width // stride // 2)


def lora_params(dit: torch.nn.Module, cfg: TrainConfig) -> int:
    targets = cfg.targets
    return sum(cfg.lora_rank * (m.in_features + m.out_features) for name, m in dit.blocks.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))


def activation_elements(kwargs: dict, n_tokens: int, checkpointing: bool, offload: bool = False) -> int:
    """Activation elements on the GPU at the backward pass's peak."""
    per_block = n_tokens * (BLOCK_DIM_FACTOR * kwargs["dim"] + BLOCK_FFN_FACTOR * kwargs["ffn_dim"])
    layers = kwargs["num_layers"]
    if checkpointing:  # block inputs (on the CPU when offloaded) + the one block being recomputed
        return (0 if offload else layers * n_tokens * kwargs["dim"]) + per_block
    return layers * per_block


def estimate(cfg: TrainConfig) -> MemoryEstimate:
    dit, kwargs = dit_shape(cfg)
    width = DTYPE_BYTES[cfg.precision]
    params = sum(p.numel() for p in dit.parameters())
    fp8 = sum(m.weight.numel() for m in dit.blocks.modules() if isinstance(m, torch.nn.Linear)) \
        if cfg.base_weights_fp8 else 0
    weights = (params - fp8) * width + fp8 * 1
    lora = lora_params(dit, cfg)
    gpus = max(1, cfg.num_gpus)
    master_and_adam = 0 if cfg.deepspeed_offload_optimizer else 12 * lora / (gpus if cfg.deepspeed_stage else 1)
    n = tokens(cfg)
    return MemoryEstimate(
        tokens=n, weights_gb=weights / GB, lora_gb=(2 * width * lora + master_and_adam) / GB,
        activations_gb=activation_elements(kwargs, n, cfg.gradient_checkpointing, cfg.activation_offload) * width / GB,
        runtime_gb=RUNTIME_GB if cfg.device == "cuda" else 0.0)
