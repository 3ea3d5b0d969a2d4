"""Training step time with cached latents/text embeddings against encoding every step (the baseline).

Same tiny Wan (real DiffSynth classes), same clips, same steps; the uncached run decodes the video and
runs the VAE and umT5 inside every step, as upstream's single-stage script does. The first step of each
run (warm-up) is left out of the median. The one-off caching stage is reported separately.
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


def main(s3: Storage | None = None, bucket: str | None = None) -> dict:
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
    print(f"train: median step {out['step_cached_median_s'] * 1000:.1f} ms cached vs "
          f"{out['step_uncached_median_s'] * 1000:.1f} ms encoding every step "
          f"(x{out['ratio_uncached_over_cached']:.2f}); tiny Wan, {out['clip']} clips, {out['steps']} steps")
    return out


if __name__ == "__main__":
    main()
