"""Synthetic clips with known properties for the evaluation tests."""
from __future__ import annotations

import numpy as np


def textured_clip(t: int = 17, h: int = 48, w: int = 64, seed: int = 0, motion: int = 1) -> np.ndarray:
    """A smooth coloured pattern drifting sideways: sharp edges, stable colours, little flicker."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, (w + t * motion) // 4 + 1, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))
    return np.stack([big[:h, i * motion:i * motion + w] for i in range(t)])


def noise_clip(t: int = 17, h: int = 48, w: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def write_tiny_lora(path, model: str = "tiny-ti2v", rank: int = 4, scale: float = 0.5, seed: int = 0):
    """A LoRA in DiffSynth's key format (`<layer>.lora_A.default.weight`) for the tiny DiT's attention layers,
    as training writes `epoch-N.safetensors`; random, large enough to change the videos visibly."""
    import torch
    from safetensors.torch import load_file, save_file

    from vidtune.models.loading import tiny_weights_dir

    base = load_file(str(tiny_weights_dir(model) / "dit.safetensors"))
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key, w in base.items():
        if key.endswith(("self_attn.q.weight", "self_attn.k.weight", "self_attn.v.weight", "self_attn.o.weight")):
            layer = key[: -len(".weight")]
            lora[f"{layer}.lora_A.default.weight"] = torch.randn(rank, w.shape[1], generator=g) * scale
            lora[f"{layer}.lora_B.default.weight"] = torch.randn(w.shape[0], rank, generator=g) * scale
    save_file(lora, str(path))
    return path
