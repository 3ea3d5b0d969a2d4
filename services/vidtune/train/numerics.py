"""fp16 safety for training on GPUs without bf16 (V100).

Two parts:
- `modulation_in_fp32(dit)`: Wan's adaptive-norm modulation (shift/scale/gate from the timestep),
  the layer norms and the gated residual additions of every DiT block and of the head run in fp32,
  with only the attention and FFN matmuls left in fp16. Wan's reference code does the same under
  autocast(float32); in fp16 `1 + scale` and `modulation + t_mod` lose most of their bits.
- `SkippedSteps`: counts optimizer steps skipped because the loss or gradients were not finite (fp16
  overflow under the dynamic loss scale, or a real divergence) and stops the run with a clear reason
  after `limit` in a row, instead of logging NaN losses until the end.
"""
from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from diffsynth.models.wan_video_dit import DiTBlock, Head

from ..platform.errors import FailedPrecondition


def _norm32(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)


def _block_forward_fp32(self: DiTBlock, x, context, t_mod, freqs):
    """DiffSynth's DiTBlock.forward with the modulation, norms and residual gates in fp32."""
    dtype = x.dtype
    has_seq = len(t_mod.shape) == 4
    mods = (self.modulation.float().to(t_mod.device) + t_mod.float()).chunk(6, dim=2 if has_seq else 1)
    if has_seq:
        mods = [m.squeeze(2) for m in mods]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
    y = self.self_attn((_norm32(self.norm1, x) * (1 + scale_msa) + shift_msa).to(dtype), freqs)
    x = (x.float() + gate_msa * y.float()).to(dtype)
    x = x + self.cross_attn(_norm32(self.norm3, x).to(dtype), context)
    y = self.ffn((_norm32(self.norm2, x) * (1 + scale_mlp) + shift_mlp).to(dtype))
    return (x.float() + gate_mlp * y.float()).to(dtype)


def _head_forward_fp32(self: Head, x, t_mod):
    """DiffSynth's Head.forward with the final modulation and norm in fp32."""
    dtype = x.dtype
    if len(t_mod.shape) == 3:
        shift, scale = (self.modulation.unsqueeze(0).float() + t_mod.float().unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (self.modulation.float() + t_mod.float().unsqueeze(1)).chunk(2, dim=1)
    return self.head((_norm32(self.norm, x) * (1 + scale) + shift).to(dtype))


def modulation_in_fp32(dit: torch.nn.Module) -> int:
    """Switch every DiT block and the head of `dit` to fp32 modulation; returns how many were switched."""
    n = 0
    for module in dit.modules():
        if isinstance(module, DiTBlock):
            module.forward = types.MethodType(_block_forward_fp32, module)
            n += 1
        elif isinstance(module, Head):
            module.forward = types.MethodType(_head_forward_fp32, module)
            n += 1
    return n


def is_finite(value: torch.Tensor | float) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(value)


class SkippedSteps:
    """Optimizer steps skipped for non-finite numbers: counted in total and in a row.

    `limit` consecutive skips end the run (0: never), since by then the dynamic loss scale has been
    halved that many times without finding a finite step and further steps only burn GPU hours.
    """

    def __init__(self, limit: int, total: int = 0):
        self.limit, self.total, self.in_row = limit, total, 0

    def record(self, skipped: bool) -> None:
        if skipped:
            self.total += 1
            self.in_row += 1
        else:
            self.in_row = 0

    def check(self, step: int, loss_scale: float | None, last_saved: int) -> None:
        if self.limit and self.in_row >= self.limit:
            scale = f", loss scale {loss_scale:g}" if loss_scale is not None else ""
            raise FailedPrecondition(
                f"training stopped at step {step}: {self.in_row} steps in a row had a non-finite loss or "
                f"gradients and were skipped ({self.total} skipped in all{scale}); the last saved state is "
                f"step {last_saved}. Lower the learning rate or use bf16/fp32 where the GPU allows it "
                f"(max_skipped_steps_in_row={self.limit})")


FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value


class Fp8Linear(torch.nn.Module):
    """A frozen Linear stored in fp8 (e4m3) with one fp32 scale per output row, computed in the input's dtype.

    Halves the frozen base weights against fp16 (the A14B expert: 28 GB -> 14 GB); each layer's weight
    is widened only while it runs. The LoRA beside it (PEFT's `base_layer` is this module) trains as usual.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        self.register_buffer("weight", (w / scale).to(FP8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight.to(torch.float32) * self.scale).to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def frozen_linears_to_fp8(dit: torch.nn.Module) -> int:
    """Replace the frozen Linears of the DiT's blocks (nearly all its weights; the LoRA layers are
    trainable and stay) by Fp8Linear; the small embeddings and the head keep their dtype. Returns how many."""
    targets = [(parent, name, child) for parent in dit.blocks.modules() for name, child in parent.named_children()
               if type(child) is torch.nn.Linear and not child.weight.requires_grad]
    for parent, name, child in targets:
        setattr(parent, name, Fp8Linear(child))
    return len(targets)
