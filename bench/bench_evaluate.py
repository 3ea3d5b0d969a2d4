"""Evaluation metric pass: video frames per second on the CPU, from the mp4 files to every metric, as
`vidtune eval score` runs it (each video decoded once on threads, frames resized once per consumer, the work
cut into single-threaded pieces on WORKERS threads: pixel statistics per video, I3D per clip, CLIP in batches
across videos on the oneDNN copy of the image tower) against the naive path: the same computations one frame
at a time (decode a frame, resize it, flow against the previous one, one CLIP forward per sampled frame with
open_clip's PIL preprocessing and the model as open_clip loads it, one I3D forward per clip). A third line
times the naive path with the oneDNN image tower, so the share of the gain that comes from kernels shows.

Models: open_clip ViT-B-32 with random weights loaded through the real loading path (the compute of the real
model; scores are irrelevant here) and the tiny I3D TorchScript (no real I3D is available offline, so the
FVD share of the time is understated). Videos: H.264 480x832 clips of 33 frames; 16 sampled frames per
video go through CLIP, as in scoring. Both sides produce the same numbers on every video (checked), so the
ratio is the cost of doing the work frame by frame. Goal: ratio >= 3x.

Beside it, the pass's compute floor: its three kernels alone (the CLIP image tower on the sampled frames in
batches, the optical flow on every pair, I3D on every clip), each timed on one thread on inputs already
decoded and resized, their sum split perfectly over the WORKERS cores. The naive time over that floor is the
most any schedule of the same fp32 arithmetic can reach on this machine.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VIDEOS, FRAMES, H, W = 4, 33, 480, 832
GOAL = 3.0
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


def naive_metrics(scorer, path: str, prompt: str, encode_image=None) -> dict:
    """Every metric of one video file, one frame at a time: no batching, no threads, no reuse, the CLIP model
    as open_clip loads it (`encode_image` swaps in another image encoder, to show what kernels alone give)."""
    import av
    import cv2
    import open_clip
    from PIL import Image

    from vidtune.evaluate import fvd as fvdlib
    from vidtune.evaluate.framestats import (HUE_BINS, SAT_BINS, _entropy, pair_motion, summarise_pairs,
                                             to_analysis)
    from vidtune.evaluate.videoio import uniform_indices

    clip = scorer.clip
    encode_image = encode_image or clip.model.encode_image
    with av.open(path) as c:
        n = c.streams.video[0].frames
    idx = set(uniform_indices(n, scorer.settings.sample_frames).tolist())
    transform = open_clip.image_transform(clip.image_size, is_train=False, mean=clip.mean, std=clip.std)
    with torch.inference_mode():
        txt = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer([prompt])), dim=-1)[0]
    embs, lap, pairs, first16 = [], [], [], []
    hue_hist, sat_hist = np.zeros(HUE_BINS), np.zeros(SAT_BINS)
    prev = None
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24")
            small = to_analysis(rgb)
            y = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
            if prev is not None:
                pairs.append(pair_motion(prev, y))
            prev = y
            if len(first16) < fvdlib.CLIP_FRAMES:
                first16.append(rgb)
            if i in idx:
                with torch.inference_mode():
                    embs.append(torch.nn.functional.normalize(
                        encode_image(transform(Image.fromarray(rgb))[None]), dim=-1)[0])
                lap.append(cv2.Laplacian(y, cv2.CV_64F).var())
                hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
                mask = (hsv[..., 1] >= 26) & (hsv[..., 2] >= 26)
                hue_hist += np.bincount((hsv[..., 0][mask].astype(np.int32) * HUE_BINS) // 180, minlength=HUE_BINS)
                sat_hist += np.bincount((hsv[..., 1].ravel().astype(np.int32) * SAT_BINS) // 256, minlength=SAT_BINS)
    feats = fvdlib.i3d_features(scorer.i3d, fvdlib.preprocess_clip(np.stack(first16), scorer.settings.fvd_size)[None],
                                batch_size=1)[0]
    return {"clip_cosine": float(np.mean([float(e @ txt) for e in embs])),
            "temporal_consistency": float(np.mean([float(a @ b) for a, b in zip(embs, embs[1:])])),
            "sharpness_lapvar": float(np.mean(lap)), "hue_entropy": _entropy(hue_hist, HUE_BINS),
            "saturation_entropy": _entropy(sat_hist, SAT_BINS), **summarise_pairs(np.array(pairs)), "features": feats}


def assert_same_metrics(batched: tuple, naive: dict, where: str = "") -> None:
    """The two paths computed the same numbers: pixel statistics to round-off, CLIP values to 1e-4 (the image
    tower's oneDNN copy sums in another order), I3D features to 1e-4."""
    m, feats, _ = batched
    for k in ("sharpness_lapvar", "hue_entropy", "saturation_entropy", "frame_difference", "flicker", "motion",
              "frozen"):
        assert abs(m[k] - naive[k]) <= 1e-9 * max(1.0, abs(naive[k])), (where, k, m[k], naive[k])
    for k in ("clip_cosine", "temporal_consistency"):
        assert abs(m[k] - naive[k]) <= 1e-4, (where, k, m[k], naive[k])
    assert np.allclose(feats, naive["features"], atol=1e-4), where


def metric_pass(scorer, paths: list[str], prompt: str) -> list:
    """The scoring path: decode each file once on threads, then Scorer.batch_metrics over all of them."""
    from concurrent.futures import ThreadPoolExecutor

    from vidtune.evaluate.scoring import WORKERS
    from vidtune.evaluate.videoio import read_frames

    with ThreadPoolExecutor(WORKERS) as pool:
        frames = [f for f, _ in pool.map(read_frames, paths)]
    return scorer.batch_metrics([(f, prompt) for f in frames])


def compute_floor(scorer, paths: list[str]) -> float:
    """Seconds of the pass's kernels alone (CLIP tower, flow, I3D), each on one thread, divided by WORKERS."""
    from vidtune.evaluate import framestats
    from vidtune.evaluate.scoring import WORKERS, torch_threads
    from vidtune.evaluate.videoio import read_frames, uniform_indices

    videos = [read_frames(p)[0] for p in paths]
    sampled = [f[j] for f in videos for j in uniform_indices(len(f), scorer.settings.sample_frames)]
    analysis = [framestats.luma(np.stack([framestats.to_analysis(x) for x in f])) for f in videos]
    tower, bs = scorer.clip.image_tower(), scorer.settings.batch_size
    batches = [scorer.clip.preprocess(sampled[i:i + bs]) for i in range(0, len(sampled), bs)]
    with torch_threads(1), torch.inference_mode():
        t0 = time.perf_counter()
        for b in batches:
            tower(b)
        for y in analysis:
            framestats.temporal_stats(y)
        for f in videos:
            scorer._i3d_one(f)
        return (time.perf_counter() - t0) / WORKERS


def main(s3=None, bucket: str | None = None) -> dict:
    """Runs on local data only (the metric pass is the subject); `s3`/`bucket` are accepted for bench/run.py."""
    from vidtune.evaluate.scoring import WORKERS, Scorer, ScoreSettings
    from vidtune.evaluate.tiny import build_tiny_i3d
    from vidtune.evaluate.videoio import write_mp4

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        settings = ScoreSettings(clip_model="ViT-B-32", clip_weights=_clip_file(Path(d)),
                                 i3d=str(build_tiny_i3d(Path(d) / "i3d.pt")))
        scorer = Scorer.load(settings)
        paths = [str(write_mp4(v, Path(d) / f"v{i}.mp4")) for i, v in enumerate(_videos())]
        total_frames = VIDEOS * FRAMES
        tower = scorer.clip.image_tower()
        # Same numbers both ways, on every video (a benchmark of different work would mean nothing).
        for p, b in zip(paths, metric_pass(scorer, paths, PROMPT)):
            assert_same_metrics(b, naive_metrics(scorer, p, PROMPT), p)
            assert_same_metrics(b, naive_metrics(scorer, p, PROMPT, tower), p)

        def batched() -> float:
            scorer.clip._text_cache.clear()
            t0 = time.perf_counter()
            metric_pass(scorer, paths, PROMPT)
            return time.perf_counter() - t0

        def naive(encode_image=None) -> float:
            t0 = time.perf_counter()
            for p in paths:
                naive_metrics(scorer, p, PROMPT, encode_image)
            return time.perf_counter() - t0

        batched()  # warm-up (thread pools, allocator)
        # Interleaved rounds, so a change in the machine's load falls on every side alike.
        rounds = [(batched(), naive(), naive(tower), compute_floor(scorer, paths)) for _ in range(REPEATS)]
        tb, tn, tk, tf = (statistics.median(r[i] for r in rounds) for i in range(4))

        from vidtune.evaluate.fvd import fvd_with_ci

        rng = np.random.default_rng(0)
        g, r = rng.normal(size=(512, 400)), rng.normal(size=(512, 400))
        t0 = time.perf_counter()
        fvd_with_ci(g, r, n_sub=20)
        t_fvd = (time.perf_counter() - t0) / 21

    print(f"evaluate metric pass from mp4 files, {VIDEOS} videos x {FRAMES} frames {W}x{H}, CLIP ViT-B-32 on 16 "
          f"sampled frames, optical flow on every pair, median of {REPEATS}:")
    print(f"  batched (vidtune):  {tb:.2f} s  -> {total_frames / tb:.1f} video frames/s")
    print(f"  naive per frame:    {tn:.2f} s  -> {total_frames / tn:.1f} video frames/s")
    print(f"  ratio batched/naive throughput: {tn / tb:.2f}x (goal >= {GOAL:.0f}x)")
    print(f"  of which kernels: naive per frame with the oneDNN image tower: {tk:.2f} s -> "
          f"{total_frames / tk:.1f} frames/s; batched/that {tk / tb:.2f}x (batching and threads alone)")
    print(f"  compute floor: CLIP tower + flow + I3D alone, one thread each, split over {WORKERS} cores: {tf:.2f} s; "
          f"naive/floor {tn / tf:.2f}x (the most the same fp32 work can reach here), batched/floor {tb / tf:.2f}")
    print(f"  Frechet distance, 400-d features, 512 vs 512 clips: {t_fvd * 1000:.0f} ms per evaluation "
          f"(x half-sampling draws for the interval)")
    return {"batched_fps": round(total_frames / tb, 2), "naive_fps": round(total_frames / tn, 2),
            "ratio": round(tn / tb, 2), "naive_onednn_fps": round(total_frames / tk, 2),
            "ratio_vs_naive_onednn": round(tk / tb, 2),
            "compute_floor_s": round(tf, 3), "naive_over_floor": round(tn / tf, 2),
            "frechet_400d_ms": round(t_fvd * 1000, 1)}


if __name__ == "__main__":
    main()
