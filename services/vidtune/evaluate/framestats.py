"""Pixel-level video statistics: sharpness, colour diversity, flicker, motion, frozen. OpenCV on small frames.

Every statistic here is measured on ANALYSIS frames: each decoded frame resized once (area interpolation) so
its shorter side is ANALYSIS_SHORT_SIDE pixels. Numbers then describe the picture, not the output size: the
same content at 416x240 and at 1664x960 gives the same sharpness (the Laplacian of a 4x larger frame sees
edges spread over 4x more pixels and would read 10-20x "blurrier").

Formulas (8-bit RGB; luma Y = round(0.299 R + 0.587 G + 0.114 B) as OpenCV's RGB2GRAY):
    sharpness_lapvar  mean over the sampled frames of Var(Laplacian(Y)), 4-neighbour kernel, reflect-101
                      border (= cv2.Laplacian(Y, CV_64F).var()); squared 8-bit levels at the analysis size
    sharpness         lapvar / (lapvar + ref) in [0, 1): 0.5 at the reference `ref` (grades config)
    hue_entropy       Shannon entropy of a 36-bin hue histogram over pixels with S and V >= 10 % (hue is
                      undefined on grey and black), divided by log(36): 0 one hue .. 1 all hues equally
    saturation_entropy  entropy of a 32-bin saturation histogram over all pixels / log(32)
    colour_diversity  (hue_entropy + saturation_entropy) / 2
    frame_difference  mean_t mean_px |Y_t - Y_t-1| (VBench's temporal_flickering before its 255-scaling):
                      every change between frames, motion included; 8-bit levels
    flicker           mean_t mean_px |Y_t - warp(Y_t-1, F_t)|, F_t the Farneback optical flow from frame t to
                      t-1: the frame difference that motion does NOT explain (noise, boiling, local and
                      global brightness flicker); 8-bit levels, 0 = none
    motion            median over consecutive pairs of the mean of the largest 5 % of |F_t| (as VBench's
                      dynamic_degree takes the top 5 % of flow magnitudes): analysis-size pixels per frame
    frozen            1.0 when at least half of the consecutive pairs differ by < FROZEN_LEVELS mean luma
                      (a still picture, or a stalled one), else 0.0
"""
from __future__ import annotations

import cv2
import numpy as np

ANALYSIS_SHORT_SIDE = 240
HUE_BINS, SAT_BINS = 36, 32
FROZEN_LEVELS = 0.5       # mean |dY| below half an 8-bit level: nothing visible changed
TOP_MOTION_SHARE = 0.05
# Farneback settings (pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags): OpenCV's sample
# values, with a 15-pixel window that follows motions of several pixels per frame at 240 lines.
_FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


def analysis_size(h: int, w: int, short_side: int = ANALYSIS_SHORT_SIDE) -> tuple[int, int]:
    """(height, width) of the analysis frame: shorter side `short_side`, aspect kept, even sizes."""
    scale = short_side / min(h, w)
    return max(2, 2 * round(h * scale / 2)), max(2, 2 * round(w * scale / 2))


def to_analysis(frame: np.ndarray, short_side: int = ANALYSIS_SHORT_SIDE) -> np.ndarray:
    """One RGB frame resized to the analysis size (area interpolation when shrinking, linear when growing)."""
    h, w = frame.shape[:2]
    ah, aw = analysis_size(h, w, short_side)
    if (ah, aw) == (h, w):
        return frame
    return cv2.resize(frame, (aw, ah), interpolation=cv2.INTER_AREA if ah < h else cv2.INTER_LINEAR)


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 luma [T, H, W] exactly as OpenCV's RGB2GRAY."""
    t, h, w, _ = frames.shape
    return cv2.cvtColor(np.ascontiguousarray(frames.reshape(t * h, w, 3)), cv2.COLOR_RGB2GRAY).reshape(t, h, w)


def laplacian_variance(frames: np.ndarray) -> np.ndarray:
    """Var(Laplacian(Y)) per frame of RGB frames [T, H, W, 3] (at whatever size they come)."""
    return np.array([cv2.Laplacian(y, cv2.CV_64F).var() for y in luma(frames)])


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
    t, h, w, _ = frames.shape
    hsv = cv2.cvtColor(np.ascontiguousarray(frames.reshape(t * h, w, 3)), cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0].ravel(), hsv[..., 1].ravel(), hsv[..., 2].ravel()
    coloured = (sat >= 26) & (val >= 26)
    hue_hist = np.bincount((hue[coloured].astype(np.int32) * HUE_BINS) // 180, minlength=HUE_BINS)
    sat_hist = np.bincount((sat.astype(np.int32) * SAT_BINS) // 256, minlength=SAT_BINS)
    return _entropy(hue_hist, HUE_BINS), _entropy(sat_hist, SAT_BINS)


def pair_motion(prev_y: np.ndarray, y: np.ndarray, grid: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[float, float, float]:
    """(frame difference, motion-compensated residual, top-5 % flow magnitude) of two luma frames."""
    diff = float(cv2.absdiff(y, prev_y).mean())
    if diff == 0.0:  # identical frames: no flow to find (and Farneback would spend the time anyway)
        return 0.0, 0.0, 0.0
    flow = cv2.calcOpticalFlowFarneback(y, prev_y, None, *_FARNEBACK)
    gx, gy = grid if grid is not None else _grid(*y.shape)
    warped = cv2.remap(prev_y, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    residual = float(cv2.absdiff(y, warped).mean())
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).ravel()
    k = max(1, int(len(mag) * TOP_MOTION_SHARE))
    return diff, residual, float(np.partition(mag, len(mag) - k)[-k:].mean())


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx, gy


def temporal_stats(y: np.ndarray) -> dict[str, float]:
    """frame_difference, flicker, motion, frozen of analysis luma frames [T, H, W]; NaN below 2 frames."""
    if len(y) < 2:
        return {k: float("nan") for k in ("frame_difference", "flicker", "motion", "frozen")}
    grid = _grid(*y.shape[1:])
    pairs = np.array([pair_motion(y[t - 1], y[t], grid) for t in range(1, len(y))])
    return summarise_pairs(pairs)


def summarise_pairs(pairs: np.ndarray) -> dict[str, float]:
    """The video's temporal statistics from its per-pair (difference, residual, top motion) rows."""
    frozen_share = float((pairs[:, 0] < FROZEN_LEVELS).mean())
    return {"frame_difference": float(pairs[:, 0].mean()), "flicker": float(pairs[:, 1].mean()),
            "motion": float(np.median(pairs[:, 2])), "frozen": 1.0 if frozen_share >= 0.5 else 0.0}


def frame_statistics(analysis: np.ndarray, sampled: np.ndarray, sharpness_reference: float) -> dict[str, float]:
    """Every pixel statistic of one video from its analysis frames [T, H, W, 3] (all of them) and the indices
    of the sampled frames that sharpness and colour look at."""
    picked = analysis[sampled]
    lapvar = float(laplacian_variance(picked).mean())
    hue_e, sat_e = colour_entropies(picked)
    out = {"sharpness_lapvar": lapvar, "sharpness": normalised_sharpness(lapvar, sharpness_reference),
           "hue_entropy": hue_e, "saturation_entropy": sat_e, "colour_diversity": (hue_e + sat_e) / 2}
    out.update(temporal_stats(luma(analysis)))
    return out
