"""Reading and writing the videos the evaluation looks at, and the frame strips people look at.

Decoding goes through PyAV in-process (no subprocess per file); every metric works on uint8 RGB
arrays shaped [T, H, W, 3], so the metric code never cares which container a video came in.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.media import SAFE_OPEN_OPTIONS

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


def is_video(name: str) -> bool:
    return str(name).lower().endswith(VIDEO_EXTENSIONS)


def read_frames(path: str | Path, max_frames: int = 0) -> tuple[np.ndarray, float]:
    """All frames (or the first `max_frames`) as uint8 RGB [T, H, W, 3], and the frame rate.

    Raises InvalidArgument naming the file when it cannot be decoded or holds no frames.
    """
    import av

    frames: list[np.ndarray] = []
    try:
        with av.open(str(path), options=SAFE_OPEN_OPTIONS) as container:
            if not container.streams.video:
                raise InvalidArgument(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate or 0.0)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    except InvalidArgument:
        raise
    except Exception as e:  # av.error.* and friends: the file, not the code, is at fault
        raise InvalidArgument(f"{path}: cannot decode video ({type(e).__name__}: {e})") from None
    if not frames:
        raise InvalidArgument(f"{path}: video has no decodable frames")
    return np.stack(frames), fps


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 16.0, crf: int = 18) -> Path:
    """Encode uint8 RGB [T, H, W, 3] as H.264 mp4 (yuv420p, so odd sizes are padded to even by one pixel)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidArgument(f"frames for {path} must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)) or 16)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def uniform_indices(n_total: int, n: int) -> np.ndarray:
    """`n` frame indices spread evenly over a clip of `n_total` frames, first and last included."""
    if n <= 0 or n >= n_total:
        return np.arange(n_total)
    return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(int))


def contact_sheet(frames: np.ndarray, n: int = 8, height: int = 96, label: str = "") -> bytes:
    """A one-row strip of `n` evenly spaced frames as PNG bytes, so a person can see a video at a glance."""
    from PIL import Image, ImageDraw

    idx = uniform_indices(len(frames), n)
    h, w = frames.shape[1:3]
    tw = max(1, round(w * height / h))
    tiles = [Image.fromarray(frames[i]).resize((tw, height), Image.BILINEAR) for i in idx]
    pad = 2
    top = 14 if label else 0
    sheet = Image.new("RGB", (len(tiles) * (tw + pad) + pad, height + 2 * pad + top), (255, 255, 255))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (pad + k * (tw + pad), pad + top))
    if label:
        ImageDraw.Draw(sheet).text((pad, 1), label[:120], fill=(40, 40, 40))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
