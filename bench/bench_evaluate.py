"""Evaluation metric pass: frames per second on the CPU, batched (as `vidtune eval score` runs it) against the
same computations done naively, one frame at a time with no batching (the baseline).

Models: open_clip ViT-B-32 with random weights loaded through the real loading path (the compute of the real
model; scores are irrelevant here) and the tiny I3D TorchScript (no real I3D is available offline, so the
FVD share of the time is understated). Videos: synthetic 480x832 clips of 33 frames, decoded once outside
the timed region; 16 sampled frames per video go through CLIP, as in scoring. Both sides produce the same
numbers (checked), so the ratio is the cost of doing the work frame by frame.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VIDEOS, FRAMES, H, W = 3, 33, 480, 832
REPEATS = 3
PROMPT = "제주 해안의 현무암 바위에 파도가 부서지는 장면"


def _clip_file(d: Path) -> str:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = d / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _videos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(VIDEOS):
        base = rng.integers(0, 256, (H // 8 + 1, (W + FRAMES * 4) // 8 + 1, 3), dtype=np.uint8)
        big = np.kron(base, np.ones((8, 8, 1), np.uint8))
        out.append(np.stack([big[:H, 4 * t:4 * t + W] for t in range(FRAMES)]))
    return out


def naive_metrics(scorer, frames: np.ndarray, prompt: str) -> dict:
    """The same metrics computed frame by frame: PIL preprocessing, one image per forward, no caches."""
    import cv2
    import open_clip
    from PIL import Image

    from vidtune.evaluate import fvd as fvdlib
    from vidtune.evaluate.framestats import HUE_BINS, SAT_BINS, _entropy
    from vidtune.evaluate.videoio import uniform_indices

    clip = scorer.clip
    idx = uniform_indices(len(frames), scorer.settings.sample_frames)
    transform = open_clip.image_transform(clip.image_size, is_train=False, mean=clip.mean, std=clip.std)
    with torch.inference_mode():
        txt = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer([prompt])), dim=-1)[0]
        embs = [torch.nn.functional.normalize(clip.model.encode_image(transform(Image.fromarray(frames[i]))[None]),
                                              dim=-1)[0] for i in idx]
    cos = float(np.mean([float(e @ txt) for e in embs]))
    tc = float(np.mean([float(a @ b) for a, b in zip(embs, embs[1:])]))
    lap, hue_hist, sat_hist = [], np.zeros(HUE_BINS), np.zeros(SAT_BINS)
    for i in idx:
        gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
        lap.append(cv2.Laplacian(gray, cv2.CV_64F).var())
        hsv = cv2.cvtColor(frames[i], cv2.COLOR_RGB2HSV)
        mask = (hsv[..., 1] >= 26) & (hsv[..., 2] >= 26)
        hue_hist += np.bincount((hsv[..., 0][mask].astype(np.int32) * HUE_BINS) // 180, minlength=HUE_BINS)
        sat_hist += np.bincount((hsv[..., 1].ravel().astype(np.int32) * SAT_BINS) // 256, minlength=SAT_BINS)
    means = [float((f.reshape(-1, 3).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
             for f in frames]
    flick = float(np.mean([abs(means[t] - (means[t - 1] + means[t + 1]) / 2) for t in range(1, len(means) - 1)]))
    clip_t, _ = fvdlib.preprocess_clip(frames, scorer.settings.fvd_size)
    feats = fvdlib.i3d_features(scorer.i3d, clip_t[None], batch_size=1)[0]
    return {"clip_cosine": cos, "temporal_consistency": tc, "sharpness_lapvar": float(np.mean(lap)),
            "hue_entropy": _entropy(hue_hist, HUE_BINS), "saturation_entropy": _entropy(sat_hist, SAT_BINS),
            "flicker": flick, "features": feats}


def main(s3=None, bucket: str | None = None) -> dict:
    """Runs on local data only (the metric pass is the subject); `s3`/`bucket` are accepted for bench/run.py."""
    from vidtune.evaluate.scoring import Scorer, ScoreSettings
    from vidtune.evaluate.tiny import build_tiny_i3d

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        settings = ScoreSettings(clip_model="ViT-B-32", clip_weights=_clip_file(Path(d)),
                                 i3d=str(build_tiny_i3d(Path(d) / "i3d.pt")))
        scorer = Scorer.load(settings)
        videos = _videos()
        total_frames = sum(len(v) for v in videos)
        # Same numbers both ways (a benchmark of different work would mean nothing).
        m, f, _ = scorer.video_metrics(videos[0], PROMPT)
        n = naive_metrics(scorer, videos[0], PROMPT)
        for k in ("clip_cosine", "temporal_consistency", "sharpness_lapvar", "hue_entropy", "flicker"):
            assert abs(m[k] - n[k]) <= 2e-2 * max(1.0, abs(n[k])), (k, m[k], n[k])

        def batched() -> float:
            scorer.clip._text_cache.clear()
            t0 = time.perf_counter()
            for v in videos:
                scorer.video_metrics(v, PROMPT)
            return time.perf_counter() - t0

        def naive() -> float:
            t0 = time.perf_counter()
            for v in videos:
                naive_metrics(scorer, v, PROMPT)
            return time.perf_counter() - t0

        batched()  # warm-up (thread pools, allocator)
        tb = statistics.median(batched() for _ in range(REPEATS))
        tn = statistics.median(naive() for _ in range(REPEATS))

        from vidtune.evaluate.fvd import fvd_with_ci

        rng = np.random.default_rng(0)
        g, r = rng.normal(size=(512, 400)), rng.normal(size=(512, 400))
        t0 = time.perf_counter()
        fvd_with_ci(g, r, n_boot=20)
        t_fvd = (time.perf_counter() - t0) / 21

    print(f"evaluate metric pass, {VIDEOS} videos x {FRAMES} frames {W}x{H}, CLIP ViT-B-32 on 16 sampled frames, "
          f"median of {REPEATS}:")
    print(f"  batched (vidtune):  {tb:.2f} s  -> {total_frames / tb:.1f} video frames/s")
    print(f"  naive per frame:    {tn:.2f} s  -> {total_frames / tn:.1f} video frames/s")
    print(f"  ratio batched/naive throughput: {tn / tb:.2f}x")
    print(f"  Frechet distance, 400-d features, 512 vs 512 clips: {t_fvd * 1000:.0f} ms per evaluation "
          f"(x bootstrap resamples for the CI)")
    return {"batched_fps": round(total_frames / tb, 2), "naive_fps": round(total_frames / tn, 2),
            "ratio": round(tn / tb, 2), "frechet_400d_ms": round(t_fvd * 1000, 1)}


if __name__ == "__main__":
    main()
