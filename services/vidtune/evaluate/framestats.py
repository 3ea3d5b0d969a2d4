"""Pixel-level video statistics: sharpness, colour diversity, flicker. Batched over all frames of a video.

Formulas (8-bit RGB frames; luma Y = round(0.299 R + 0.587 G + 0.114 B), as OpenCV's RGB2GRAY):
    sharpness_lapvar  mean over sampled frames of Var(Laplacian(Y)), 4-neighbour kernel, reflect-101 border
                      (= cv2.Laplacian(Y, CV_64F).var()); units: squared 8-bit levels; depends on resolution
    sharpness         lapvar / (lapvar + ref) in [0, 1): 0.5 at the reference `ref` (config, default 100,
                      a common in-focus threshold for 8-bit frames)
    hue_entropy       Shannon entropy of a 36-bin hue histogram over pixels with S and V >= 10 % (hue is
                      undefined on grey and black), divided by log(36): 0 one hue .. 1 all hues equally
    saturation_entropy  entropy of a 32-bin saturation histogram over all pixels / log(32)
    colour_diversity  (hue_entropy + saturation_entropy) / 2
    flicker           mean_t |Ybar_t - (Ybar_{t-1} + Ybar_{t+1}) / 2| over ALL frames, Ybar = mean luma of
                      a frame: the second difference ignores smooth fades and catches frame-to-frame
                      brightness oscillation; units: 8-bit levels (0 = no flicker)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
HUE_BINS, SAT_BINS = 36, 32


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 luma [T, H, W] rounded like OpenCV."""
    return np.clip(np.rint(frames.astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)


def laplacian_variance(frames: np.ndarray) -> np.ndarray:
    """Var(Laplacian(Y)) per frame, all frames in one convolution."""
    y = torch.from_numpy(luma(frames)).double().unsqueeze(1)
    lap = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), _LAPLACE.double())
    return lap.flatten(1).var(dim=1, unbiased=False).numpy()


def normalised_sharpness(lapvar: float, ref: float) -> float:
    return float(lapvar / (lapvar + ref)) if lapvar == lapvar else float("nan")


def _entropy(hist: np.ndarray, bins: int) -> float:
    total = hist.sum()
    if total <= 0:
        return 0.0
    p = hist[hist > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(bins))


def colour_entropies(frames: np.ndarray) -> tuple[float, float]:
    """(hue_entropy, saturation_entropy) pooled over the given frames, one colour conversion for all."""
    import cv2

    t, h, w, _ = frames.shape
    hsv = cv2.cvtColor(np.ascontiguousarray(frames.reshape(t * h, w, 3)), cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0].ravel(), hsv[..., 1].ravel(), hsv[..., 2].ravel()
    coloured = (sat >= 26) & (val >= 26)
    hue_hist = np.bincount((hue[coloured].astype(np.int32) * HUE_BINS) // 180, minlength=HUE_BINS)
    sat_hist = np.bincount((sat.astype(np.int32) * SAT_BINS) // 256, minlength=SAT_BINS)
    return _entropy(hue_hist, HUE_BINS), _entropy(sat_hist, SAT_BINS)


def flicker(frames: np.ndarray) -> float:
    """Mean absolute second difference of per-frame mean luma (8-bit levels); NaN below 3 frames."""
    if len(frames) < 3:
        return float("nan")
    means = (frames.reshape(len(frames), -1, 3).astype(np.float32) @ _LUMA).mean(axis=1).astype(np.float64)
    return float(np.abs(means[1:-1] - (means[:-2] + means[2:]) / 2).mean())
