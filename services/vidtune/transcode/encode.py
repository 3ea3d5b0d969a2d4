"""One input file -> one output file on a profile's canvas: ffmpeg for video, OpenCV for images.

The picture keeps its aspect ratio and sits centred on a black canvas. ffmpeg reads only the local file
it was given: the protocol whitelist allows `file` alone and the demuxer whitelist refuses playlists and
concat lists, so no input can make it open other files or hosts; every run has a timeout.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import ffmpeg

from vidtune.platform.errors import FailedPrecondition, InvalidArgument
from vidtune.platform.jobs import ChildProcesses
from vidtune.platform.media import SAFE_DEMUXERS, VideoInfo, check_image_pixels, probe_video

from vidtune.quality.probe import FrameScorer

from .profiles import Profile

def ffmpeg_binary() -> str:
    found = os.environ.get("VIDTUNE_FFMPEG") or shutil.which("ffmpeg")
    if not found:
        raise FailedPrecondition("ffmpeg not found on PATH (apt-get install ffmpeg, or set VIDTUNE_FFMPEG)")
    return found


@functools.lru_cache(maxsize=None)
def nvenc_works(binary: str) -> bool:
    """True when h264_nvenc can really encode here (a GPU and driver present), tried once per process."""
    try:
        r = subprocess.run([binary, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i",
                            "color=black:s=256x256:d=0.1", "-c:v", "h264_nvenc", "-f", "null", "-"],
                           capture_output=True, timeout=30)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_encoder(binary: str) -> str:
    """VIDTUNE_TRANSCODE_ENCODER=libx264|h264_nvenc forces one; the default takes NVENC when it works."""
    forced = os.environ.get("VIDTUNE_TRANSCODE_ENCODER", "auto")
    if forced in ("libx264", "h264_nvenc"):
        return forced
    return "h264_nvenc" if nvenc_works(binary) else "libx264"


@dataclass
class EncodeResult:
    width: int
    height: int
    duration: float
    fps: float
    encoder: str
    scores: dict | None = None  # quality scores of the encoded picture (FrameScorer.result)


def video_command(src: Path, dst: Path, profile: Profile, source: VideoInfo, encoder: str,
                  binary: str = "ffmpeg", score_size: tuple[int, int] | None = None) -> list[str]:
    """The exact ffmpeg command line for one video (also what the benchmark runs directly).

    With `score_size` (w, h) a second output on stdout carries every encoded frame's luma scaled to that
    size (raw 8-bit gray): the quality scores' input, split from the same decode, so nothing decodes twice."""
    # ffmpeg applies rotation metadata itself (autorotate), so the canvas fit uses the displayed size.
    fps = profile.fps or source.fps or 25.0
    stream = ffmpeg.input(f"file:{src}", protocol_whitelist="file", format_whitelist=SAFE_DEMUXERS)
    video = (stream.video
             .filter("fps", fps=f"{fps:.6g}")   # constant frame rate, also for variable-rate sources
             .filter("scale", profile.width, profile.height, force_original_aspect_ratio="decrease",
                     force_divisible_by=2, flags="bicubic")
             .filter("setsar", 1)
             .filter("pad", profile.width, profile.height, "(ow-iw)/2", "(oh-ih)/2", color="black")
             .filter("format", "yuv420p"))      # 8-bit 4:2:0 from 10-bit or 4:2:2 sources
    out_args = {"movflags": "+faststart", "pix_fmt": "yuv420p", "an": None, "sn": None, "dn": None,
                "map_metadata": -1, "protocol_whitelist": "file"}
    if encoder == "h264_nvenc":
        out_args.update(vcodec="h264_nvenc", preset="p4", rc="vbr", cq=profile.nvenc_cq, **{"b:v": 0})
    else:
        out_args.update(vcodec="libx264", preset=profile.preset, crf=profile.crf)
    if profile.max_duration:
        out_args["t"] = f"{profile.max_duration:.3f}"
    if score_size is None:
        args = video.output(f"file:{dst}", **out_args).compile(cmd=binary, overwrite_output=True)
    else:
        split = video.split()
        encoded, scored = split[0], split[1]
        # Y exactly as encoded: extractplanes does not convert, and one range in and out stops swscale
        # stretching limited-range luma (which would move every score); `area` averages as OpenCV's does.
        scored = (scored.filter("extractplanes", "y")
                  .filter("scale", *score_size, flags="area", in_range="tv", out_range="tv"))
        score_args = {"format": "rawvideo", "pix_fmt": "gray", **({"t": out_args["t"]} if "t" in out_args else {})}
        args = ffmpeg.merge_outputs(encoded.output(f"file:{dst}", **out_args),
                                    scored.output("pipe:1", **score_args)).compile(cmd=binary, overwrite_output=True)
    return [args[0], "-hide_banner", "-nostdin", "-loglevel", "error", *args[1:]]


def run_ffmpeg(cmd: list[str], timeout: float, label: str, processes: ChildProcesses | None = None,
               read_stdout: Callable[[IO[bytes]], None] | None = None) -> None:
    """Run ffmpeg with a timeout, no stdin and no proxy settings; errors name the input and ffmpeg's reason.
    The process joins `processes` (its job's), so stopping that job stops it and no other job's.

    `read_stdout` consumes ffmpeg's stdout while it runs; stderr is read on its own thread meanwhile, so
    neither pipe can fill and stall ffmpeg."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    processes = processes or ChildProcesses()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    processes.add(proc)
    timed_out = threading.Event()

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def expire() -> None:
        timed_out.set()
        kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    stderr: list[bytes] = []
    errors = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    timer.start()
    errors.start()
    failure: Exception | None = None
    try:
        if read_stdout:
            try:
                read_stdout(proc.stdout)
            except Exception as e:  # noqa: BLE001 - reported below, after ffmpeg is stopped
                failure = e
                kill()
            finally:
                proc.stdout.close()
        proc.wait()
        errors.join()
    finally:
        timer.cancel()
        processes.discard(proc)
    if timed_out.is_set():
        raise InvalidArgument(f"{label}: ffmpeg did not finish within {timeout:.0f} s")
    if proc.returncode != 0:
        lines = [ln for ln in b"".join(stderr).decode("utf-8", "replace").splitlines() if ln.strip()]
        reason = "; ".join(lines[-3:]) or f"exit code {proc.returncode}"
        if proc.returncode < 0:
            reason = f"killed by signal {-proc.returncode}"
        raise InvalidArgument(f"{label}: ffmpeg failed: {reason}")
    if failure is not None:
        raise InvalidArgument(f"{label}: reading the frames to score failed: {type(failure).__name__}: {failure}")


def encode_timeout(duration: float) -> float:
    """Generous for a CPU encoder on a busy node, still bounded: 2 minutes plus 4x real time."""
    base = float(os.environ.get("VIDTUNE_FFMPEG_TIMEOUT_BASE", "120"))
    return base + 4.0 * max(duration, 0.0)


def encode_video(src: Path, dst: Path, profile: Profile, label: str,
                 processes: ChildProcesses | None = None, scores: bool = True) -> EncodeResult:
    """Encode one video; with `scores`, also the quality scores of the encoded picture (the padded canvas
    that trains), from the frames this encode decodes anyway."""
    source = probe_video(src, label)
    if source.duration <= 0 and source.frames <= 0:
        raise InvalidArgument(f"{label}: video has no duration and no frames")
    binary = ffmpeg_binary()
    encoder = choose_encoder(binary)
    scorer = FrameScorer(profile.width, profile.height) if scores else None
    cmd = video_command(src, dst, profile, source, encoder, binary, scorer.sharp_size if scorer else None)
    run_ffmpeg(cmd, encode_timeout(source.duration), label, processes, _feed(scorer) if scorer else None)
    out = probe_video(dst, f"{label} (output)")
    if out.frames <= 0 or out.duration <= 0:
        raise InvalidArgument(f"{label}: ffmpeg wrote no frames (the source may be truncated)")
    return EncodeResult(out.width, out.height, out.duration, out.fps, encoder, scorer.result() if scorer else None)


def _feed(scorer: FrameScorer) -> Callable[[IO[bytes]], None]:
    def read(pipe: IO[bytes]) -> None:
        size = scorer.frame_bytes
        while len(data := pipe.read(size)) == size:
            scorer.add(data)
    return read


def letterbox(image, width: int, height: int):
    """Resize an HxWxC array to fit width x height, aspect kept, centred on black."""
    import cv2
    import numpy as np

    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x, y = (width - nw) // 2, (height - nh) // 2
    canvas[y:y + nh, x:x + nw] = resized
    return canvas


def encode_image(src: Path, dst: Path, profile: Profile, label: str,
                 processes: ChildProcesses | None = None) -> EncodeResult:
    import cv2

    check_image_pixels(src, label)
    # IMREAD_COLOR applies EXIF orientation and gives 8-bit BGR from 16-bit, grey or alpha images.
    image = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise InvalidArgument(f"{label}: not a readable image")
    canvas = letterbox(image, profile.width, profile.height)
    if not cv2.imwrite(str(dst), canvas):
        raise InvalidArgument(f"{label}: could not write PNG")
    return EncodeResult(profile.width, profile.height, 0.0, 0.0, "png")
