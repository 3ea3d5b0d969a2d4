"""Probe each media item in-process (PyAV + OpenCV) and compute scores that need no model weights.

Per item: container facts (platform.media.probe_video), decodability at start, middle and end, sha256
(exact duplicates), a perceptual hash of three key frames (near duplicates), and scores: blur (Laplacian
variance), motion (optical flow), black and frozen frame ratios, scene cuts. A corrupt file never raises:
it gets `decodable=False` and a reason. Results are cached per item (keyed by path+size+mtime or
URI+etag and the probe settings), so a re-run or a resumed job skips items already probed.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from vidtune.platform.errors import InvalidArgument, NotFound
from vidtune.platform.media import SAFE_OPEN_OPTIONS, probe_video
from vidtune.platform.storage import Storage, is_s3, join, split_uri

from .manifest import resolve_media

PROBE_VERSION = 1  # part of every cache key: bump when a score's definition changes

# Column name -> Arrow type of everything probe adds to a manifest.
PROBE_SCHEMA = pa.schema([
    ("media_exists", pa.bool_()), ("decodable", pa.bool_()), ("probe_error", pa.string()),
    ("probe_container", pa.string()), ("probe_codec", pa.string()), ("probe_width", pa.float64()),
    ("probe_height", pa.float64()), ("probe_fps", pa.float64()), ("probe_duration", pa.float64()),
    ("probe_frames", pa.int64()), ("probe_rotation", pa.int64()), ("probe_pix_fmt", pa.string()),
    ("probe_audio", pa.bool_()), ("file_size", pa.int64()), ("sha256", pa.string()), ("phash", pa.string()),
    ("blur", pa.float64()), ("motion", pa.float64()), ("black_ratio", pa.float64()),
    ("frozen_ratio", pa.float64()), ("scene_cuts", pa.int64()),
])


@dataclass(frozen=True)
class ProbeSettings:
    """What a probe computes; part of the cache key, so changing it re-probes."""

    scores: bool = True            # False: facts, hashes and decode checks only (no per-frame analysis)
    analysis_width: int = 160      # frames are scaled to this width for motion/black/frozen/cuts
    blur_width: int = 320          # key frames are scaled to this width for the blur score
    flow_pairs: int = 12           # consecutive frame pairs used for optical flow
    max_decode_frames: int = 2400  # longer clips: analyse the first N frames, seek-check the rest
    black_luma: float = 20.0       # mean luma (0-255) under which a frame counts as black
    frozen_diff: float = 0.5       # mean abs difference (0-255) under which two frames count as equal
    cut_hist_distance: float = 0.5  # share of pixels changing histogram bins for a scene cut


def _empty_row() -> dict:
    return {f.name: None for f in PROBE_SCHEMA}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dhash(gray: np.ndarray) -> int:
    """64-bit difference hash: robust to re-encoding and rescaling, changed by content."""
    import cv2

    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}


def _gray(frame, width: int) -> np.ndarray:
    """Luma scaled to `width` (aspect kept). 8-bit YUV frames give their Y plane directly (no colour
    conversion); anything else goes through libswscale."""
    import cv2

    w = max(1, min(width, frame.width))
    h = max(2, int(round(frame.height * w / max(1, frame.width))) // 2 * 2)
    if frame.format.name in _PLANAR_8BIT:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
        return y.copy() if w == frame.width else cv2.resize(y, (w, h), interpolation=cv2.INTER_AREA)
    return frame.reformat(width=w, height=h, format="gray").to_ndarray()


def _blur(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def _flow_magnitude(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 2, 5, 1.1, 0)
    return float(np.sqrt((flow ** 2).sum(axis=2)).mean())


def _hist(gray: np.ndarray) -> np.ndarray:
    return np.bincount((gray >> 4).ravel(), minlength=16) / gray.size


def probe_file(path: str | Path, media_type: str = "video", settings: ProbeSettings = ProbeSettings()) -> dict:
    """Facts and scores of one local file; never raises for a bad file (decodable=False + reason)."""
    row = _empty_row()
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        row.update(media_exists=False, decodable=False, probe_error=f"missing file: {path} ({e.strerror})")
        return row
    row.update(media_exists=True, file_size=int(st.st_size))
    if st.st_size == 0:
        row.update(decodable=False, probe_error=f"empty file: {path}")
        return row
    row["sha256"] = file_sha256(path)
    try:
        if media_type == "image":
            _probe_image(path, row, settings)
        else:
            _probe_video(path, row, settings)
    except Exception as e:  # noqa: BLE001 - a damaged file must become a reason, never a crash
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: {type(e).__name__}: {e}")
    return row


def _probe_image(path: Path, row: dict, settings: ProbeSettings) -> None:
    import cv2

    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: not a readable image")
        return
    h, w = img.shape[:2]
    row.update(decodable=True, probe_container=path.suffix.lower().lstrip("."), probe_width=float(w),
               probe_height=float(h), probe_frames=1, probe_rotation=0, phash=f"{dhash(img):016x}")
    if settings.scores:
        scale = min(1.0, settings.blur_width / max(1, w))
        small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        row["blur"] = _blur(small)


def _probe_video(path: Path, row: dict, settings: ProbeSettings) -> None:
    import av

    try:
        info = probe_video(path)
    except InvalidArgument as e:
        row.update(decodable=False, probe_error=f"undecodable: {e}")
        return
    row.update(probe_container=info.container, probe_codec=info.codec, probe_width=float(info.display_width),
               probe_height=float(info.display_height), probe_fps=info.fps or None,
               probe_duration=info.duration or None, probe_frames=info.frames, probe_rotation=info.rotation,
               probe_pix_fmt=info.pix_fmt, probe_audio=info.has_audio)
    expected = max(1, info.frames)
    key_frames: dict[str, object] = {}
    tiny: list[np.ndarray] = []
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    stride = max(1, min(expected, settings.max_decode_frames) // max(1, settings.flow_pairs))
    decoded, last_t, error = 0, 0.0, None
    with av.open(str(path), metadata_errors="ignore", options=SAFE_OPEN_OPTIONS) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        prev_small = None
        try:
            for frame in c.decode(stream):
                if decoded == 0:
                    key_frames["start"] = frame
                if decoded == expected // 2:
                    key_frames["middle"] = frame
                key_frames["end"] = frame
                if frame.time is not None:
                    last_t = float(frame.time)
                if settings.scores:
                    small = _gray(frame, settings.analysis_width)
                    tiny.append(small)
                    if prev_small is not None and (decoded - 1) % stride == 0 and len(pairs) < settings.flow_pairs:
                        pairs.append((prev_small, small))
                    prev_small = small
                decoded += 1
                if decoded >= settings.max_decode_frames or (not settings.scores and decoded >= 1):
                    break
        except Exception as e:  # noqa: BLE001 - damaged packets end the decode; reported below
            error = f"{type(e).__name__}: {e}"
        if decoded and decoded < expected and (decoded >= settings.max_decode_frames or not settings.scores):
            # Not decoded sequentially to the end: check the middle and the end by seeking.
            for name, frac in (("middle", 0.5), ("end", 0.98)):
                try:
                    target = int(frac * info.duration / stream.time_base) if stream.time_base else 0
                    c.seek(target, stream=stream, backward=True, any_frame=False)
                    frame = next(c.decode(stream))
                    key_frames[name] = frame
                    if name == "end" and frame.time is not None:
                        last_t = max(last_t, float(frame.time))
                except Exception as e:  # noqa: BLE001
                    error = error or f"{name} not decodable: {type(e).__name__}: {e}"
                    break
    row["probe_frames"] = max(decoded, info.frames) if decoded < settings.max_decode_frames else info.frames
    if decoded == 0:
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: no frame decodes"
                   + (f" ({error})" if error else ""))
        return
    frame_dt = 1.0 / info.fps if info.fps else 0.0
    full_decode = settings.scores and decoded < settings.max_decode_frames
    if full_decode and info.duration and last_t + 2 * frame_dt < 0.9 * info.duration:
        error = error or f"stream ends at {last_t:.2f}s of {info.duration:.2f}s"
    if full_decode:
        row["probe_frames"] = decoded
    if error:
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: {error} after {decoded} frames")
    else:
        row["decodable"] = True
    grays = {k: _gray(f, settings.blur_width) for k, f in key_frames.items()}
    row["phash"] = "".join(f"{dhash(grays[k]):016x}" for k in ("start", "middle", "end") if k in grays)
    if not settings.scores:
        return
    row["blur"] = float(np.mean([_blur(g) for g in grays.values()]))
    row["motion"] = float(np.median([_flow_magnitude(a, b) for a, b in pairs])) if pairs else 0.0
    stack = np.stack(tiny).astype(np.float32)
    means = stack.mean(axis=(1, 2))
    p98 = np.percentile(stack.reshape(len(stack), -1), 98, axis=1)
    row["black_ratio"] = float(np.mean((means < settings.black_luma) & (p98 < settings.black_luma * 2)))
    if len(stack) > 1:
        diffs = np.abs(stack[1:] - stack[:-1]).mean(axis=(1, 2))
        row["frozen_ratio"] = float(np.mean(diffs < settings.frozen_diff))
        hists = np.stack([_hist(t) for t in tiny])
        hist_change = np.abs(hists[1:] - hists[:-1]).sum(axis=1) / 2
        row["scene_cuts"] = int(np.sum((hist_change > settings.cut_hist_distance) & (diffs > 20)))
    else:
        row["frozen_ratio"], row["scene_cuts"] = 0.0, 0


# ---------------------------------------------------------------- manifest level: cache + pool

def cache_key(storage: Storage, uri: str, settings: ProbeSettings) -> str | None:
    """Identity of an item's content without reading it: path+size+mtime, or URI+etag. None if absent."""
    try:
        if is_s3(uri):
            bucket, key = split_uri(uri)
            st = storage.client.stat_object(bucket, key)
            ident = [uri, st.etag, st.size]
        else:
            st = os.stat(uri)
            ident = [os.path.abspath(uri), st.st_size, st.st_mtime_ns]
    except Exception:  # noqa: BLE001 - a missing item is probed (and reported) every time
        return None
    blob = json.dumps([PROBE_VERSION, ident, asdict(settings)], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class ProbeStats:
    probed: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0


def probe_manifest(table: pa.Table, root: str, storage: Storage | None = None, cache_root: str | None = None,
                   settings: ProbeSettings = ProbeSettings(), workers: int = 2, scratch: str | None = None,
                   progress: Callable[[int, int, str], None] | None = None,
                   cancelled: Callable[[], bool] | None = None) -> tuple[pa.Table, ProbeStats]:
    """`table` with the probe columns filled for every row; cached items are not probed again."""
    storage = storage or Storage()
    n = table.num_rows
    medias = table.column("media").to_pylist()
    types = table.column("media_type").to_pylist()
    ingest_err = table.column("ingest_error").to_pylist()
    rows: list[dict | None] = [None] * n
    stats = ProbeStats()
    lock = threading.Lock()
    done = [0]
    t0 = time.monotonic()

    def work(i: int) -> None:
        if cancelled and cancelled():
            return
        row = _probe_one(storage, root, medias[i], types[i], ingest_err[i], cache_root, settings, scratch, stats,
                         lock)
        rows[i] = row
        with lock:
            done[0] += 1
            if row.get("decodable") is False:
                stats.failed += 1
            if progress and (done[0] % 10 == 0 or done[0] == n):
                progress(done[0], n, f"probed {done[0]}/{n}")

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(work, range(n)))
    if cancelled and cancelled():
        from vidtune.platform.errors import JobCancelled

        raise JobCancelled("probe cancelled")
    stats.seconds = time.monotonic() - t0
    cols = {f.name: pa.array([r[f.name] if r else None for r in rows], type=f.type) for f in PROBE_SCHEMA}
    for name, arr in cols.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table, stats


def _probe_one(storage: Storage, root: str, media: str | None, media_type: str | None, ingest_error: str | None,
               cache_root: str | None, settings: ProbeSettings, scratch: str | None, stats: ProbeStats,
               lock: threading.Lock) -> dict:
    row = _empty_row()
    if ingest_error or not media:
        return row  # already rejected at ingest; nothing trustworthy to probe
    try:
        uri = resolve_media(root, media)
    except InvalidArgument as e:
        row.update(media_exists=False, decodable=False, probe_error=f"bad path: {e}")
        return row
    key = cache_key(storage, uri, settings)
    cache_uri = join(cache_root, key[:2], f"{key}.json") if cache_root and key else None
    if cache_uri:
        try:
            cached = json.loads(storage.read_text(cache_uri))
            with lock:
                stats.cached += 1
            return {f.name: cached.get(f.name) for f in PROBE_SCHEMA}
        except (NotFound, ValueError):
            pass
    if key is None:
        row.update(media_exists=False, decodable=False, probe_error=f"missing file: {uri}")
        return row
    try:
        with storage.local_copy(uri, scratch) as local:
            row = probe_file(local, media_type or "video", settings)
    except NotFound:
        row.update(media_exists=False, decodable=False, probe_error=f"missing file: {uri}")
        return row
    if row.get("probe_error"):
        row["probe_error"] = row["probe_error"].replace(str(local), uri)
    with lock:
        stats.probed += 1
    if cache_uri:
        storage.write_text(cache_uri, json.dumps(row), "application/json")
    return row
