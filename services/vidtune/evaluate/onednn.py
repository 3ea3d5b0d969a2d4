"""fp32 inference copies of a model whose Linear and self-attention projections run on oneDNN.

Why: PyTorch sends fp32 Linear layers to MKL's sgemm, which on AMD CPUs takes its AVX2 path; oneDNN picks
its kernels by instruction set (AVX-512 where present). On the 2-core EPYC this project benchmarks on, a
768x3072 Linear runs at ~80 GFLOPS through MKL and ~150-190 through oneDNN, and the CLIP image tower is
almost all such layers. The arithmetic stays fp32 (results differ from the plain model by summation order
only, ~1e-6); nothing is quantised or lowered in precision.

`packed_copy` returns a copy that shares every other layer's weights with the original, holds the Linear
weights prepacked in oneDNN's layout, and has been checked against the original on one input; when oneDNN
is unavailable or the check fails it returns None and the caller keeps the plain model.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("vidtune.evaluate.onednn")


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """nn.Linear with its weight prepacked for oneDNN (inference only)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.register_buffer("packed", _pack(lin.weight))
        self.register_buffer("bias", None if lin.bias is None else lin.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.packed, self.bias)


class PackedSelfAttention(nn.Module):
    """nn.MultiheadAttention (batch_first, one embedding size, query = key = value) on oneDNN projections and
    scaled_dot_product_attention: the same computation as the module's inference path."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.heads = mha.num_heads
        self.register_buffer("qkv", _pack(mha.in_proj_weight))
        self.register_buffer("qkv_bias", mha.in_proj_bias.detach())
        self.out = PackedLinear(mha.out_proj)

    @staticmethod
    def supports(mha: nn.MultiheadAttention) -> bool:
        return (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_bias is not None
                and mha.bias_k is None and not mha.add_zero_attn)

    def forward(self, query, key, value, need_weights: bool = False, attn_mask: torch.Tensor | None = None):
        if key is not query or value is not query or need_weights:
            raise NotImplementedError("PackedSelfAttention computes self-attention without weights only")
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MultiheadAttention: True = masked out; SDPA: True = attend
        b, t, c = query.shape
        qkv = _linear(query, self.qkv, self.qkv_bias).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.out(o.transpose(1, 2).reshape(b, t, c)), None


def packed_copy(module: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> nn.Module | None:
    """A copy of `module` (fp32, eval, CPU) with Linear and self-attention layers on oneDNN, or None when
    that is not possible here or the copy's output on `example` differs from the original's by > `atol`."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return None
    try:
        memo: dict[int, nn.Module] = {}
        for m in module.modules():
            if type(m) is nn.Linear and m.weight.dtype == torch.float32:
                memo[id(m)] = PackedLinear(m)
            elif type(m) is nn.MultiheadAttention and PackedSelfAttention.supports(m):
                memo[id(m)] = PackedSelfAttention(m)
        if not memo:
            return None
        # deepcopy takes the packed layers from the memo, so their dense weights are not copied
        fast = copy.deepcopy(module, memo).eval()
        with torch.inference_mode():
            want, got = module(example), fast(example)
        if want.shape != got.shape or not torch.allclose(want, got, atol=atol, rtol=1e-4):
            log.warning("oneDNN copy of %s disagrees with the original (max |diff| %.2e): using the original",
                        type(module).__name__, float((want - got).abs().max()) if want.shape == got.shape else -1)
            return None
        return fast
    except (RuntimeError, NotImplementedError, TypeError) as e:
        log.warning("oneDNN copy of %s not possible (%s): using the original", type(module).__name__, e)
        return None
