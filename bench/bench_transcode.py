"""Transcode overhead: `vidtune transcode run` against the same ffmpeg commands run directly.

Both sides encode the same fixed set of clips with the same parallelism; the direct side runs exactly the
command lines vidtune builds (video_command), so the ratio is vidtune's own cost: listing, probing,
staging, result records. A second figure adds the object-store round trip (inputs and outputs in S3).
A third: the encode with the quality scores computed from its frames (a second ffmpeg output read by the
scorer) against the same encode without, clip by clip in turn, wall time and CPU time (ffmpeg + scorer).

`python -m bench.bench_transcode [--scores-only]`.
"""
from __future__ import annotations

import argparse
import resource
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
from vidtune.transcode.encode import choose_encoder, encode_video, ffmpeg_binary, video_command
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
    out.update(bench_scores())
    return out


def bench_scores(repeats: int = REPEATS) -> dict:
    """Encode with scores against the same encode without, one clip after the other (so load hits both)."""
    profile = get_profile("wan-720p")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        inputs = [make_clip(d / "in" / f"clip{i}.mp4", w, h, s) for i, (w, h, s) in enumerate(CLIPS)]
        wall = {False: [], True: []}
        cpu = {False: [], True: []}
        for rep in range(repeats):
            sums = {False: [0.0, 0.0], True: [0.0, 0.0]}
            for p in inputs:
                for scores in ((False, True) if rep % 2 == 0 else (True, False)):  # neither side always first
                    c0, t0 = _cpu(), time.perf_counter()
                    r = encode_video(p, d / "out.mp4", profile, p.name, scores=scores)
                    sums[scores][0] += time.perf_counter() - t0
                    sums[scores][1] += _cpu() - c0
                    assert (r.scores is not None) == scores
            for k in (False, True):
                wall[k].append(sums[k][0])
                cpu[k].append(sums[k][1])
    out = {"scores_plain_s": statistics.median(wall[False]), "scores_with_s": statistics.median(wall[True]),
           "scores_plain_cpu_s": statistics.median(cpu[False]), "scores_with_cpu_s": statistics.median(cpu[True])}
    out["scores_ratio"] = out["scores_with_s"] / out["scores_plain_s"]
    out["scores_cpu_ratio"] = out["scores_with_cpu_s"] / out["scores_plain_cpu_s"]
    print(f"transcode with quality scores: {len(CLIPS)} clips ({sum(c[2] for c in CLIPS):.0f} s of video) to "
          f"wan-720p, one at a time, median of {repeats}")
    print(f"  baseline encode_video without scores   {out['scores_plain_s']:7.2f} s wall  "
          f"{out['scores_plain_cpu_s']:7.2f} s CPU")
    print(f"  encode_video with scores (every frame) {out['scores_with_s']:7.2f} s wall  "
          f"{out['scores_with_cpu_s']:7.2f} s CPU   ratio {out['scores_ratio']:.3f} wall, "
          f"{out['scores_cpu_ratio']:.3f} CPU")
    print("  (CPU counts ffmpeg and the scorer and is what a busy node pays; wall time also moves with other load)")
    return out


def _cpu() -> float:
    """CPU seconds of this process (the scorer) and its finished children (ffmpeg)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _fresh(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scores-only", action="store_true", help="only the encode with scores against without")
    if ap.parse_args().scores_only:
        bench_scores()
    else:
        main()
