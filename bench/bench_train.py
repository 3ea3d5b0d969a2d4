"""Training step time with cached latents/text embeddings against encoding every step (the baseline).

Same tiny Wan (real DiffSynth classes), same clips, same steps; the uncached run decodes the video and
runs the VAE and umT5 inside every step, as upstream's single-stage script does. The first step of each
run (warm-up) is left out of the median. The one-off caching stage is reported separately.

Caching-stage peak memory with the V100 presets' options (cache_offload + vae_tiled) against without
(the baseline): each measured in a fresh process (memprobe.py: peak resident set above the loaded tiny
umT5 + VAE over one prompt and one clip), median of REPEATS. On the CPU offload has nothing to free (its
target is CPU memory and the tiny umT5 is 0.1 MB), so the measured ratio is the tiling's; the memory
model's figures for the V100 presets, printed beside it, carry offload's 22.7 GB of umT5.
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


def _run(dataset: Path, out: Path, use_cache: bool) -> tuple[list[float], float]:
    from vidtune.train.runner import run_training

    cfg = {"preset": "cpu-tiny", "height": SIZE[0], "width": SIZE[1], "num_frames": SIZE[2], "epochs": EPOCHS,
           "use_cache": use_cache, "save_every_steps": 1000}
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
        _run(dataset, d / "warm", True)  # builds the tiny weights and warms the caches of the loaders
        cached, cached_wall = _run(dataset, d / "cached", True)
        uncached, uncached_wall = _run(dataset, d / "uncached", False)
        out = {
            "model": "tiny-ti2v", "clip": "x".join(map(str, SIZE)), "steps": len(cached) + 1,
            "step_cached_median_s": statistics.median(cached),
            "step_uncached_median_s": statistics.median(uncached),
            # whole runs on a fresh output prefix: the cached one includes its one-off caching stage
            "run_cached_incl_caching_wall_s": cached_wall, "run_uncached_wall_s": uncached_wall,
        }
        out["ratio_uncached_over_cached"] = out["step_uncached_median_s"] / out["step_cached_median_s"]
        out.update(memory)
    print(f"train: median step {out['step_cached_median_s'] * 1000:.1f} ms cached vs "
          f"{out['step_uncached_median_s'] * 1000:.1f} ms encoding every step "
          f"(x{out['ratio_uncached_over_cached']:.2f}); tiny Wan, {out['clip']} clips, {out['steps']} steps")
    return out


if __name__ == "__main__":
    main()
