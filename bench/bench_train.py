"""Training step time with cached latents/text embeddings against encoding every step (the baseline), and
with buckets against one size for every clip (the baseline of the second ratio).

Same tiny Wan (real DiffSynth classes), same clips, same steps; the uncached run decodes the video and
runs the VAE and umT5 inside every step, as upstream's single-stage script does. The first step of each
run (warm-up) is left out of the median. The one-off caching stage is reported separately.

Caching-stage peak memory with the V100 presets' options (cache_offload + vae_tiled) against without
(the baseline): each measured in a fresh process (memprobe.py: peak resident set above the loaded tiny
umT5 + VAE over one prompt and one clip), median of REPEATS. On the CPU offload has nothing to free (its
target is CPU memory and the tiny umT5 is 0.1 MB), so the measured ratio is the tiling's; the memory
model's figures for the V100 presets, printed beside it, carry offload's 22.7 GB of umT5.

Buckets: landscape and portrait clips of 2 s and 8 s (8 fps). Without buckets every clip is centre-cropped
to 64x128 and trains its first 17 frames (one step per clip); with buckets each clip keeps its orientation
(64x128 or 128x64, the same pixel area) and trains two windows (first and last frames) of the longest of 9
or 17 frames it fills. The step-time ratio says what a bucketed step costs against a one-size step; the
run's steps double with two windows per clip, which is the point (more of each clip is seen).
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from vidtune.platform.storage import Storage
from vidtune.samples import make_clip

CLIPS = 4
SIZE = (128, 128, 17)   # height, width, frames
EPOCHS = 3


def _dataset(root: Path) -> Path:
    for i in range(CLIPS):
        make_clip(root / "media" / f"clip{i}.mp4", SIZE[1], SIZE[0], 1.0, fps=24)
    rows = "".join(f"media/clip{i}.mp4,테스트 영상 {i} a test pattern\n" for i in range(CLIPS))
    (root / "metadata.csv").write_text("video,prompt\n" + rows, encoding="utf-8")
    return root


def _run(dataset: Path, out: Path, **config) -> tuple[list[float], float]:
    """Step times (the first left out) and the wall time of one fresh run."""
    from vidtune.train.runner import run_training

    cfg = {"preset": "cpu-tiny", "height": SIZE[0], "width": SIZE[1], "num_frames": SIZE[2], "epochs": EPOCHS,
           "save_every_steps": 1000, **config}
    t0 = time.perf_counter()
    run_training(cfg, str(dataset), str(out), storage=Storage())
    wall = time.perf_counter() - t0
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [m["step_time_s"] for m in metrics[1:]], wall


CACHING_SIZE = (320, 320, 9)   # 20x20 latent cells: tiles of 8 cells (128 px) with 2 blended
REPEATS = 3


def caching_memory() -> dict:
    from vidtune.train.config import load_config
    from vidtune.train.memory import caching_estimate
    from vidtune.train.memprobe import measure

    h, w, f = CACHING_SIZE
    plain = {"preset": "cpu-tiny", "height": h, "width": w, "num_frames": f}
    options = {**plain, "cache_offload": True, "vae_tiled": True, "vae_tile_size": 8, "vae_tile_stride": 6}

    def peak_mb(config):
        runs = [measure("caching", config) for _ in range(REPEATS)]
        return statistics.median((r["weights"] + max(r["text_peak"], r["vae_peak"])) / 1e6 for r in runs)

    out = {"caching_clip": "x".join(map(str, CACHING_SIZE)), "caching_peak_plain_mb": peak_mb(plain),
           "caching_peak_offload_tiled_mb": peak_mb(options)}
    out["caching_ratio_plain_over_options"] = out["caching_peak_plain_mb"] / out["caching_peak_offload_tiled_mb"]
    for name in ("v100-2gpu-ti2v-5b-480x832x49", "v100-8gpu-t2v-a14b-high-480x832x49"):
        cfg = {"preset": name, "weights": "/m"}
        out[f"model_{name}_caching_gb"] = round(caching_estimate(load_config(cfg)).total_gb, 1)
        out[f"model_{name}_caching_plain_gb"] = round(caching_estimate(load_config(
            {**cfg, "cache_offload": False, "vae_tiled": False})).total_gb, 1)
    return out


BUCKET_SIZE = (64, 128, 17)
BUCKET_CLIPS = [("land2", 128, 64, 2), ("land8", 128, 64, 8), ("port2", 64, 128, 2), ("port8", 64, 128, 8)]


def _mixed_dataset(root: Path) -> Path:
    for name, w, h, seconds in BUCKET_CLIPS:
        make_clip(root / "media" / f"{name}.mp4", w, h, seconds, fps=8)
    rows = "".join(f"media/{name}.mp4,{name} 테스트 영상\n" for name, *_ in BUCKET_CLIPS)
    (root / "metadata.csv").write_text("video,prompt\n" + rows, encoding="utf-8")
    return root


def buckets_vs_one_size(d: Path) -> dict:
    dataset = _mixed_dataset(d / "mixed")
    settings = dict(height=BUCKET_SIZE[0], width=BUCKET_SIZE[1], num_frames=BUCKET_SIZE[2], bucket_frames="9,17",
                    frame_extraction="uniform", frame_windows=2)
    one, one_wall = _run(dataset, d / "one-size", buckets=False, **settings)
    bucketed, bucketed_wall = _run(dataset, d / "bucketed", buckets=True, **settings)
    out = {"clips": len(BUCKET_CLIPS), "one_size": "x".join(map(str, BUCKET_SIZE)),
           "steps_one_size": len(one) + 1, "steps_bucketed": len(bucketed) + 1,
           "step_one_size_median_s": statistics.median(one), "step_bucketed_median_s": statistics.median(bucketed),
           "run_one_size_wall_s": one_wall, "run_bucketed_wall_s": bucketed_wall}
    out["ratio_bucketed_over_one_size"] = out["step_bucketed_median_s"] / out["step_one_size_median_s"]
    print(f"train buckets: median step {out['step_bucketed_median_s'] * 1000:.1f} ms bucketed vs "
          f"{out['step_one_size_median_s'] * 1000:.1f} ms one size (x{out['ratio_bucketed_over_one_size']:.2f}); "
          f"{out['steps_bucketed']} vs {out['steps_one_size']} steps, runs {bucketed_wall:.1f} s vs {one_wall:.1f} s "
          f"incl. caching; tiny Wan, {len(BUCKET_CLIPS)} clips (landscape/portrait, 2 s/8 s)")
    return out


def main(s3: Storage | None = None, bucket: str | None = None) -> dict:
    memory = caching_memory()
    print(f"train: caching-stage peak {memory['caching_peak_plain_mb']:.1f} MB without offload/tiling vs "
          f"{memory['caching_peak_offload_tiled_mb']:.1f} MB with (x{memory['caching_ratio_plain_over_options']:.2f}); "
          f"tiny Wan, {memory['caching_clip']} clip, median of {REPEATS} processes. Memory model, V100 presets: "
          f"TI2V-5B {memory['model_v100-2gpu-ti2v-5b-480x832x49_caching_plain_gb']} -> "
          f"{memory['model_v100-2gpu-ti2v-5b-480x832x49_caching_gb']} GB, A14B "
          f"{memory['model_v100-8gpu-t2v-a14b-high-480x832x49_caching_plain_gb']} -> "
          f"{memory['model_v100-8gpu-t2v-a14b-high-480x832x49_caching_gb']} GB per GPU")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        dataset = _dataset(d / "ds")
        _run(dataset, d / "warm")  # builds the tiny weights and warms the caches of the loaders
        cached, cached_wall = _run(dataset, d / "cached", use_cache=True)
        uncached, uncached_wall = _run(dataset, d / "uncached", use_cache=False)
        out = {
            "model": "tiny-ti2v", "clip": "x".join(map(str, SIZE)), "steps": len(cached) + 1,
            "step_cached_median_s": statistics.median(cached),
            "step_uncached_median_s": statistics.median(uncached),
            # whole runs on a fresh output prefix: the cached one includes its one-off caching stage
            "run_cached_incl_caching_wall_s": cached_wall, "run_uncached_wall_s": uncached_wall,
        }
        out["ratio_uncached_over_cached"] = out["step_uncached_median_s"] / out["step_cached_median_s"]
        out.update(memory)
        buckets = buckets_vs_one_size(d)
    print(f"train: median step {out['step_cached_median_s'] * 1000:.1f} ms cached vs "
          f"{out['step_uncached_median_s'] * 1000:.1f} ms encoding every step "
          f"(x{out['ratio_uncached_over_cached']:.2f}); tiny Wan, {out['clip']} clips, {out['steps']} steps")
    return {**out, "buckets": buckets}


if __name__ == "__main__":
    main()
