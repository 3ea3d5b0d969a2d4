"""Transcode overhead: `vidtune transcode run` against the same ffmpeg commands run directly.

Both sides encode the same fixed set of clips with the same parallelism; the direct side runs exactly the
command lines vidtune builds (video_command), so the ratio is vidtune's own cost: listing, probing,
staging, result records. A second figure adds the object-store round trip (inputs and outputs in S3).
"""
from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vidtune.platform.media import probe_video
from vidtune.platform.storage import Storage, join
from vidtune.samples import make_clip
from vidtune.transcode.batch import run_batch
from vidtune.transcode.encode import choose_encoder, ffmpeg_binary, video_command
from vidtune.transcode.profiles import get_profile

CLIPS = [(1920, 1080, 6.0), (1920, 1080, 4.0), (1280, 720, 6.0), (720, 512, 6.0), (1080, 1920, 4.0), (1920, 1080, 5.0)]
WORKERS = 2
REPEATS = 3


def _direct(inputs: list[Path], out_dir: Path, profile) -> float:
    binary = ffmpeg_binary()
    encoder = choose_encoder(binary)
    cmds = [video_command(p, out_dir / f"{p.stem}.mp4", profile, probe_video(p), encoder, binary) for p in inputs]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda c: subprocess.run(c, check=True, stdin=subprocess.DEVNULL), cmds))
    return time.perf_counter() - t0


def _vidtune(storage: Storage, src: str, out: str, profile) -> float:
    t0 = time.perf_counter()
    summary = run_batch(storage, [src], out, profile, workers=WORKERS)
    assert summary.failed == 0
    return time.perf_counter() - t0


def main(s3: Storage | None = None, bucket: str | None = None) -> dict:
    profile = get_profile("wan-720p")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        inputs = [make_clip(d / "in" / f"clip{i}.mp4", w, h, s) for i, (w, h, s) in enumerate(CLIPS)]
        direct, local = [], []
        for r in range(REPEATS):  # interleaved, so machine noise hits both sides alike
            direct.append(_direct(inputs, _fresh(d / f"direct{r}"), profile))
            local.append(_vidtune(Storage(), str(d / "in"), str(_fresh(d / f"vt{r}")), profile))
        out = {"clips": len(CLIPS), "seconds_of_video": sum(c[2] for c in CLIPS), "workers": WORKERS,
               "ffmpeg_direct_s": statistics.median(direct), "vidtune_local_s": statistics.median(local)}
        out["ratio_local"] = out["vidtune_local_s"] / out["ffmpeg_direct_s"]
        if s3 is not None and bucket:
            for p in inputs:
                s3.upload(p, join(bucket, "bench-in", p.name))
            remote = [_vidtune(s3, join(bucket, "bench-in/"), join(bucket, f"bench-out{r}"), profile)
                      for r in range(REPEATS)]
            out["vidtune_s3_s"] = statistics.median(remote)
            out["ratio_s3"] = out["vidtune_s3_s"] / out["ffmpeg_direct_s"]
    print(f"transcode: {out['clips']} clips ({out['seconds_of_video']:.0f} s of video) to wan-720p, "
          f"{WORKERS} at once, median of {REPEATS}")
    print(f"  baseline ffmpeg direct        {out['ffmpeg_direct_s']:7.2f} s")
    print(f"  vidtune transcode run (local) {out['vidtune_local_s']:7.2f} s   ratio {out['ratio_local']:.3f}  (goal <= 1.10)")
    if "ratio_s3" in out:
        print(f"  vidtune transcode run (S3)    {out['vidtune_s3_s']:7.2f} s   ratio {out['ratio_s3']:.3f}  "
              "(inputs and outputs through the object store)")
    return out


def _fresh(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


if __name__ == "__main__":
    main()
