"""Frechet Video Distance between SETS of clips, with a subsampling interval.

FVD compares two distributions: the I3D features of generated clips and of reference clips (same category),
each summarised as a Gaussian (mean, covariance). One video has no distribution, so there is no per-video
FVD here; per-video records carry the I3D features that the set-level FVD is computed from.

Protocol: StyleGAN-V's (Skorokhodov et al. 2022, "FVD_16"), named in every report as PROTOCOL:
    clip        the first 16 consecutive frames of a video at its native frame rate; a video shorter than 16
                frames is DISCARDED (not padded) and counted, so the report says how many sets lost clips
    resize      shorter side to `size` (default 224) bilinear with antialiasing, then a centre crop size x size
    values      RGB scaled to [-1, 1]; layout [B, 3, 16, size, size]
    model       an I3D TorchScript (`i3d_torchscript.pt` interface) called with
                rescale=False, resize=False, return_features=True -> 400-d features per clip
    distance    d = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_g^1/2 S_r S_g^1/2)^1/2)
                with symmetric eigendecompositions (negative eigenvalues from round-off clipped to 0), in
                float64, clamped at >= 0. Units: squared I3D feature units.
    interval    subsampling without replacement: `n_sub` draws of half of each set give FVD_m; the spread
                of FVD_m around its own mean, scaled by sqrt(m / n) to the full set size, is put around the
                estimate: [d - q_hi, d - q_lo] with q the quantiles of sqrt(m/n) (FVD_m - mean FVD_m).
                Resampling WITH replacement (a bootstrap) duplicates clips, which shrinks the covariance
                and inflates FVD: such intervals miss their own estimate. This interval describes sampling
                spread at this set size only; FVD's small-set bias (two identical distributions give
                ~200 at 9 clips, ~55 at 256) is not in it, so compare FVDs only between sets of equal size.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vidtune.platform.errors import FailedPrecondition, InvalidArgument
from vidtune.platform.storage import Storage

from vidtune.platform.cache import cached_local

log = logging.getLogger("vidtune.evaluate.fvd")

CLIP_FRAMES = 16
DEFAULT_SIZE = 224
# Published FVDs use >= 2048 clips per set; far fewer gives numbers that are biased upward and noisy.
MIN_RELIABLE_CLIPS = 256
PROTOCOL = ("StyleGAN-V FVD_16: first 16 consecutive frames, clips shorter than 16 frames discarded and counted, "
            "I3D features (400-d), Frechet distance per set; interval by half-sampling without replacement")


def load_i3d(uri: str | None, storage: Storage | None = None, device: str = "cpu") -> torch.jit.ScriptModule:
    """The I3D feature extractor from a TorchScript file (path or s3:// URI)."""
    if not uri:
        raise FailedPrecondition("FVD needs an I3D TorchScript (i3d_torchscript.pt): pass its path or s3:// URI")
    path = cached_local(uri, storage, "I3D TorchScript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the published I3D exists only as TorchScript
            model = torch.jit.load(str(path), map_location=device)
    except Exception as e:
        raise InvalidArgument(f"{uri}: not a loadable TorchScript I3D ({type(e).__name__}: {e})") from None
    return model.eval()


def is_test_model(model) -> bool:
    """The tiny random stand-in (tests, demo) rather than a real I3D."""
    return getattr(model, "original_name", type(model).__name__) == "TinyI3D"


def preprocess_clip(frames: np.ndarray, size: int = DEFAULT_SIZE, clip_frames: int = CLIP_FRAMES) -> torch.Tensor:
    """uint8 [T >= clip_frames, H, W, 3] -> float [3, clip_frames, size, size] in [-1, 1] (first frames)."""
    if len(frames) < clip_frames:
        raise InvalidArgument(f"FVD needs {clip_frames} consecutive frames, the video has {len(frames)}")
    x = torch.from_numpy(np.ascontiguousarray(frames[:clip_frames])).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size].clamp(0, 255) / 127.5 - 1.0
    return x.permute(1, 0, 2, 3).contiguous()


@torch.inference_mode()
def i3d_features(model, clips: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Features [B, D] (float64) of preprocessed clips [B, 3, T, S, S]."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for i in range(0, len(clips), batch_size):
        feats = model(clips[i:i + batch_size].to(device), rescale=False, resize=False, return_features=True)
        out.append(feats.reshape(feats.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(0), np.atleast_2d(np.cov(feats, rowvar=False, ddof=1))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Frechet distance between N(mu1, s1) and N(mu2, s2); never negative, stable for singular covariances."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1 = np.asarray(s1, np.float64)
    s2 = np.asarray(s2, np.float64)
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def fvd_from_features(gen: np.ndarray, ref: np.ndarray) -> float:
    if len(gen) < 2 or len(ref) < 2:
        return float("nan")
    return frechet_distance(*gaussian_stats(gen), *gaussian_stats(ref))


@dataclass
class FvdResult:
    value: float
    ci_low: float
    ci_high: float
    n_generated: int
    n_reference: int
    feature_dim: int
    confidence: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def set_size_warnings(n_gen: int, n_ref: int, dim: int, min_reliable: int = MIN_RELIABLE_CLIPS) -> list[str]:
    """Plain-language warnings about what a set of this size can and cannot tell."""
    out = []
    n = min(n_gen, n_ref)
    if n < 2:
        out.append(f"FVD not computed: a set has {n} clip(s); a covariance needs at least 2")
        return out
    if n <= dim:
        out.append(f"only {n} clips for {dim}-d features: the covariances are rank-deficient, so this FVD is "
                   "dominated by sampling noise; compare it only with FVDs from sets of the same size")
    if n < min_reliable:
        out.append(f"small set ({n_gen} generated, {n_ref} reference clips, < {min_reliable}): FVD is biased "
                   "upward at small sizes and not comparable to published values (which use >= 2048 clips)")
    return out


def _subsampling_interval(estimate: float, draws: np.ndarray, m: int, n: int, confidence: float
                          ) -> tuple[float, float]:
    """[estimate - q_hi, estimate - q_lo], q the quantiles of sqrt(m/n) (draw - mean draw)."""
    draws = np.asarray([d for d in draws if d == d], np.float64)
    if len(draws) < 2:
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    q_lo, q_hi = np.quantile(np.sqrt(m / n) * (draws - draws.mean()), [a, 1 - a])
    return float(estimate - q_hi), float(estimate - q_lo)


def fvd_with_ci(gen: np.ndarray, ref: np.ndarray, n_sub: int = 200, confidence: float = 0.95,
                seed: int = 0, min_reliable: int = MIN_RELIABLE_CLIPS) -> FvdResult:
    """FVD between two feature sets and its half-sampling interval (see the module docstring)."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    dim = gen.shape[1] if gen.ndim == 2 and gen.size else (ref.shape[1] if ref.ndim == 2 and ref.size else 0)
    warns = set_size_warnings(len(gen), len(ref), dim, min_reliable)
    value = fvd_from_features(gen, ref)
    lo = hi = float("nan")
    mg, mr = len(gen) // 2, len(ref) // 2
    if value == value and n_sub > 0 and min(mg, mr) >= 2:
        rng = np.random.default_rng(seed)
        draws = np.array([fvd_from_features(gen[rng.permutation(len(gen))[:mg]], ref[rng.permutation(len(ref))[:mr]])
                          for _ in range(n_sub)])
        lo, hi = _subsampling_interval(value, draws, min(mg, mr), min(len(gen), len(ref)), confidence)
    elif value == value:
        warns.append("no interval: half of a set is fewer than 2 clips")
    return FvdResult(value, lo, hi, len(gen), len(ref), dim, confidence, warns)


def fvd_delta_ci(gen_a: np.ndarray, gen_b: np.ndarray, ref: np.ndarray, n_sub: int = 200,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """FVD(b) - FVD(a) against the same reference, with a half-sampling interval (as fvd_with_ci).

    When both generated sets have the same length they are taken as paired (same prompts and seeds in the
    same order) and subsampled with the same indices, so prompt-to-prompt variation cancels out.
    """
    gen_a, gen_b, ref = (np.asarray(x, np.float64) for x in (gen_a, gen_b, ref))
    delta = fvd_from_features(gen_b, ref) - fvd_from_features(gen_a, ref)
    ma, mb, mr = len(gen_a) // 2, len(gen_b) // 2, len(ref) // 2
    if delta != delta or n_sub <= 0 or min(ma, mb, mr) < 2:
        return delta, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    paired = len(gen_a) == len(gen_b)
    draws = []
    for _ in range(n_sub):
        r = ref[rng.permutation(len(ref))[:mr]]
        ia = rng.permutation(len(gen_a))[:ma]
        ib = ia if paired else rng.permutation(len(gen_b))[:mb]
        draws.append(fvd_from_features(gen_b[ib], r) - fvd_from_features(gen_a[ia], r))
    lo, hi = _subsampling_interval(delta, np.array(draws), min(ma, mb, mr), min(len(gen_a), len(gen_b), len(ref)),
                                   confidence)
    return delta, lo, hi


def archive_overall(fvd: float) -> float:
    """The archive team's legacy "Overall %" (= 100 - FVD/10 of their per-video FVD), from a per-set FVD."""
    return 100.0 - fvd / 10.0 if fvd == fvd else float("nan")
