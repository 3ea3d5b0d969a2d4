"""Timestep sampling and loss weighting of the flow-matching loss.

`uniform` with the `default` weighting is DiffSynth's own choice (a uniform index into the shifted
training schedule, weighted by its bell-shaped `training_weight`) and stays the default, so runs stay
comparable. The others draw a noise level (sigma in [0, 1]) and train at the schedule's nearest entry
inside the expert's range:
- logit_normal: sigmoid(N(mean, std)) (SD3), concentrated around mid noise;
- sigmoid: sigmoid(scale * N(0, 1)) (musubi-tuner's default for Wan);
- shift: u ~ U(0, 1) moved towards high noise by shift * u / (1 + (shift - 1) * u).
Weighting `none` trains every timestep with weight 1 instead of the schedule's weight.
"""
from __future__ import annotations

import torch

SAMPLINGS = ("uniform", "logit_normal", "sigmoid", "shift")
WEIGHTINGS = ("default", "none")


def sample_sigma(method: str, mean: float = 0.0, std: float = 1.0, scale: float = 1.0, shift: float = 3.0) -> float:
    """One noise level in [0, 1] drawn with torch's global generator (so a seeded run repeats it)."""
    if method == "logit_normal":
        return float(torch.sigmoid(torch.randn(()) * std + mean))
    if method == "sigmoid":
        return float(torch.sigmoid(torch.randn(()) * scale))
    if method == "shift":
        u = float(torch.rand(()))
        return shift * u / (1 + (shift - 1) * u)
    raise ValueError(f"timestep sampling {method!r} draws no sigma; known: {', '.join(SAMPLINGS)}")


def index_range(n: int, min_boundary: float, max_boundary: float) -> tuple[int, int]:
    """Indices [lo, hi) of the schedule DiffSynth's loss draws from for an expert's boundaries."""
    lo = int(min_boundary * n)
    return lo, max(lo + 1, int(max_boundary * n))


def nearest_index(sigmas: torch.Tensor, sigma: float, lo: int, hi: int) -> int:
    return lo + int(torch.argmin((sigmas[lo:hi].float() - sigma).abs()))


def pick_index(cfg, sigmas: torch.Tensor, lo: int, hi: int) -> int:
    """The schedule index one training step uses, as the config's sampling draws it."""
    if cfg.timestep_sampling == "uniform":
        return int(torch.randint(lo, hi, (1,)))
    sigma = sample_sigma(cfg.timestep_sampling, cfg.logit_mean, cfg.logit_std, cfg.sigmoid_scale, cfg.timestep_shift)
    return nearest_index(sigmas, sigma, lo, hi)


def one_timestep(index: int, n: int) -> dict:
    """Loss boundaries that make DiffSynth's randint(lo, hi) draw `index` only (half steps keep int()
    off its rounding edges)."""
    return {"min_timestep_boundary": (index + 0.5) / n, "max_timestep_boundary": (index + 1.5) / n}
