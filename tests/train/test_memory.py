"""The memory model: weights exact, activations' slope by tokens against the tiny model's saved tensors,
and the V100 presets within a V100's 32 GB with their memory options."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from vidtune.train.config import load_config
from vidtune.train.memory import activation_elements, dit_shape, estimate, tokens
from vidtune.train.module import WanLoraTrainingModule, cache_pipeline, encode_sample


def test_a14b_v100_preset_fits_in_30_gb_only_with_its_memory_options():
    cfg = load_config({"preset": "v100-8gpu-t2v-a14b-high-480x832x49", "weights": "/m"})
    assert cfg.base_weights_fp8 and cfg.activation_offload and cfg.deepspeed_offload_optimizer
    est = estimate(cfg)
    assert est.tokens == 20280 and est.total_gb <= 30
    assert 14.0 < est.weights_gb < 15.0                                 # 14B frozen weights, 1 byte each
    plain = estimate(load_config({"preset": "v100-8gpu-t2v-a14b-high-480x832x49", "weights": "/m",
                                  "base_weights_fp8": False, "activation_offload": False}))
    assert 28.0 < plain.weights_gb < 29.0 and plain.total_gb > 32       # the 28.6 GB + 8.3 GB: no fit
    five_b = estimate(load_config({"preset": "v100-2gpu-ti2v-5b-480x832x49", "weights": "/m"}))
    assert five_b.tokens == 5070 and five_b.total_gb <= 30


def _saved_bytes(module, entry) -> int:
    """Bytes the autograd graph keeps for the backward pass (each storage once)."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        module(cached=entry)
    return sum(storages.values())


def test_weights_are_exact_and_the_activation_slope_by_tokens_matches_the_tiny_model():
    measured, estimated = {}, {}
    for size in (64, 128):
        cfg = load_config({"preset": "cpu-tiny", "height": size, "width": size, "gradient_checkpointing": False})
        pipe = cache_pipeline(cfg)
        frames = [Image.new("RGB", (size, size), (40 * i % 255, 90, 160)) for i in range(cfg.num_frames)]
        entry = encode_sample(pipe, pipe.split_pipeline_units(["dit"])[1], frames, "a red square", cfg.spec.family)
        module = WanLoraTrainingModule(cfg).train()
        frozen = sum(p.numel() * p.element_size() for n, p in module.pipe.dit.named_parameters() if "lora_" not in n)
        assert frozen == pytest.approx(estimate(cfg).weights_gb * 1e9, rel=1e-9)
        measured[size] = _saved_bytes(module, entry)
        _, kwargs = dit_shape(cfg)
        estimated[size] = activation_elements(kwargs, tokens(cfg), checkpointing=False) * 4
    assert tokens(load_config({"preset": "cpu-tiny", "height": 128, "width": 128})) == 48
    slope_measured = measured[128] - measured[64]
    slope_estimated = estimated[128] - estimated[64]
    assert slope_estimated == pytest.approx(slope_measured, rel=0.25), (measured, estimated)
