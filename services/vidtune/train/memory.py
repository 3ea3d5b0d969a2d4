"""A model of a training run's peak memory per GPU: weights, LoRA optimizer state, activations by tokens.

Counts come from the DiT itself (built with empty parameters), so every model size is covered:
- frozen weights in the compute dtype, or 1 byte for block Linears stored in fp8;
- LoRA: parameters + gradients in the compute dtype, fp32 master copy and two Adam moments (12 bytes),
  the last two partitioned across GPUs by ZeRO-2 and left on the CPU with optimizer offload;
- activations per DiT block and token: BLOCK_DIM_FACTOR x dim + BLOCK_FFN_FACTOR x ffn_dim elements
  (attention inputs/outputs, norms, LoRA inputs; the FFN's hidden pair). With gradient checkpointing a
  block keeps only its input (dim elements; in CPU memory with activation_offload) and one block is
  recomputed at a time;
- the backward pass's working set: BACKWARD_FACTOR x one block's activations (gradients of the block
  being differentiated, beside what is saved);
- RUNTIME_GB for the CUDA context and allocator slack on a GPU.

The caching stage (`caching_estimate`) holds umT5 and the VAE in fp32 (bf16 for bf16 runs) and encodes
one sample at a time: umT5's activations are TEXT_ATTN_FACTOR attention-sized tensors (heads x 512 x
512) at its peak; the VAE encodes 4 frames at a time, so its peak is VAE_FACTORS[class] x dim elements
per pixel of a 4-frame chunk of the frame (or of one tile with vae_tiled; DiffSynth's Wan2.2 VAE works
on 2x2-patched pixels), plus the clip itself (3 x frames x pixels) and ENCODER_FIXED_GB of first-use
buffers. With cache_offload only one encoder is on the GPU at a time, so the peak is the larger turn,
not the sum.

BLOCK_* factors were read off the tiny model's saved tensors; BACKWARD_FACTOR, TEXT_ATTN_FACTOR and
VAE_FACTORS off peaks measured on the CPU at 128 and 256 pixels (memprobe.py). tests/train/test_memory.py
checks the estimates against measured peaks at other sizes. CPU convolutions keep im2col buffers that
cuDNN does not, so on a GPU the VAE figure errs high; on a V100 the run's own memory_mb metric is the check.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .config import TrainConfig

BLOCK_DIM_FACTOR = 24
BLOCK_FFN_FACTOR = 2
BACKWARD_FACTOR = 0.75
TEXT_ATTN_FACTOR = 6
TEXT_LENGTH = 512                      # DiffSynth pads every prompt to umT5's 512 tokens
VAE_FACTORS = {"WanVideoVAE": 37, "WanVideoVAE38": 54}   # by the DiffSynth class (or the one it derives from)
ENCODER_FIXED_GB = 0.008
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
    backward = int(BACKWARD_FACTOR * per_block)
    if checkpointing:  # block inputs (on the CPU when offloaded) + the one block being recomputed
        return (0 if offload else layers * n_tokens * kwargs["dim"]) + per_block + backward
    return layers * per_block + backward


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


# -- the caching stage ------------------------------------------------------------------------------------

@dataclass
class CachingEstimate:
    text_encoder_gb: float
    vae_gb: float
    text_activations_gb: float
    vae_activations_gb: float
    runtime_gb: float
    offload: bool

    @property
    def total_gb(self) -> float:
        text_turn = self.text_encoder_gb + self.text_activations_gb
        vae_turn = self.vae_gb + self.vae_activations_gb
        if self.offload:
            return max(text_turn, vae_turn) + self.runtime_gb
        return self.text_encoder_gb + self.vae_gb + max(self.text_activations_gb, self.vae_activations_gb) \
            + self.runtime_gb

    def as_dict(self) -> dict:
        return {**{k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "total_gb": round(self.total_gb, 2)}


def _meta_component(cfg: TrainConfig, role: str) -> torch.nn.Module:
    import importlib

    component = cfg.spec.component(role)
    module, _, name = component.model_class.rpartition(".")
    with torch.device("meta"):
        return getattr(importlib.import_module(module), name)(**component.kwargs)


def _vae_factor(vae: torch.nn.Module) -> tuple[int, int]:
    """(VAE_FACTORS entry, patch size) of a VAE by its DiffSynth class."""
    for cls in type(vae).__mro__:
        if cls.__name__ in VAE_FACTORS:
            return VAE_FACTORS[cls.__name__], 2 if cls.__name__ == "WanVideoVAE38" else 1
    raise ValueError(f"no memory factor for VAE class {type(vae).__name__}")


def vae_activation_elements(cfg: TrainConfig, vae: torch.nn.Module) -> int:
    """Elements the VAE holds at its peak while encoding one clip (see the module docstring)."""
    factor, patch = _vae_factor(vae)
    h, w = cfg.height, cfg.width
    if cfg.vae_tiled:  # a tile is vae_tile_size latent cells, clipped at the frame's edge
        side = cfg.vae_tile_size * cfg.spec.vae_stride
        h, w = min(h, side), min(w, side)
    chunk = 4 * (h // patch) * (w // patch)
    return factor * vae.model.dim * chunk + 3 * cfg.num_frames * cfg.height * cfg.width


def caching_estimate(cfg: TrainConfig) -> CachingEstimate:
    """Peak memory per GPU of the caching stage (umT5 + VAE encoding one sample at a time)."""
    width = 2 if cfg.precision == "bf16" else 4
    text, vae = _meta_component(cfg, "text_encoder"), _meta_component(cfg, "vae")

    def size(m):
        return sum(t.numel() for t in (*m.parameters(), *m.buffers())) * width / GB

    text_act = TEXT_ATTN_FACTOR * text.num_heads * TEXT_LENGTH ** 2 * width / GB
    return CachingEstimate(
        text_encoder_gb=size(text), vae_gb=size(vae), text_activations_gb=text_act,
        vae_activations_gb=vae_activation_elements(cfg, vae) * width / GB + ENCODER_FIXED_GB,
        runtime_gb=RUNTIME_GB if cfg.device == "cuda" else 0.0, offload=cfg.cache_offload)
