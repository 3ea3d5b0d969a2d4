"""Probe each media item in-process (PyAV + OpenCV) and compute scores that need no model weights.

Per item: container facts (platform.media.probe_video), decodability, sha256 (exact duplicates), a
perceptual hash of three frames (near duplicates), and scores: blur (Laplacian variance), motion (optical
flow), black and frozen frame ratios, scene cuts. A corrupt file never raises: it gets `decodable=False`
and a reason.

Scores come from sampled frames by default: every packet is read without decoding (which finds truncation
and broken NAL units, the damage a full decode reports, and which H.264 frames nothing is predicted from),
then only `samples` points are decoded, each a key frame where one lies near the wanted time, with the
frame after it as a pair for motion and frozen frames. Between a key frame and a later sample the decoder
gets only the frames others are predicted from; the cost is then one key frame and about three more frames
per sample with a key frame every second, and the reference frames of the whole GOP with x264's default of
250 frames. `decode="full"` decodes every frame as the reference. A transcoded clip whose transcode report
carries its scores (FrameScorer, run on the encoder's frames) is not decoded at all: the scores are checked
and only its packets are read, for damage. Results are cached per item (keyed by path+size+mtime or
URI+etag and the probe settings), so a re-run or a resumed job skips items already probed.
"""
from __future__ import annotations

import hashlib
import json
import math
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
from vidtune.platform.media import SAFE_OPEN_OPTIONS, open_video
from vidtune.platform.storage import Storage, is_s3, join, split_uri

from .ingest import location_key
from .manifest import resolve_media

PROBE_VERSION = 2  # part of every cache key: bump when a score's definition changes

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
    decode: str = "sampled"        # "sampled": `samples` points (key frames where possible) | "full": every frame
    samples: int = 8               # points decoded per clip in sampled mode (each with its next frame)
    analysis_width: int = 160      # frames are scaled to this width for motion/black/frozen/cuts
    blur_width: int = 320          # key frames are scaled to this width for the blur score
    flow_pairs: int = 12           # consecutive frame pairs used for optical flow
    max_decode_frames: int = 2400  # longer clips: analyse the first N frames, seek-check the rest
    black_luma: float = 20.0       # mean luma (0-255) under which a frame counts as black
    frozen_diff: float = 0.5       # mean abs difference (0-255) under which two frames count as equal
    cut_hist_distance: float = 0.5  # share of pixels changing histogram bins for a scene cut

    def __post_init__(self):
        if self.decode not in ("sampled", "full"):
            raise InvalidArgument(f"probe decode must be 'sampled' or 'full', not {self.decode!r}")
        if self.samples < 1:
            raise InvalidArgument(f"probe samples must be at least 1, not {self.samples}")


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

    return _hash_bits(cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA))


def _hash_bits(small: np.ndarray) -> int:
    """dhash of a picture already reduced to 9x8."""
    bits = (small[:, 1:].astype(np.int16) > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}


def scaled_size(width: int, height: int, target: int) -> tuple[int, int]:
    """The size a picture is analysed at: `target` wide (never wider than it is), aspect kept, height even."""
    w = max(1, min(target, width))
    return w, max(2, int(round(height * w / max(1, width))) // 2 * 2)


def _gray(frame, width: int) -> np.ndarray:
    """Luma scaled to `width` (aspect kept). 8-bit YUV frames give their Y plane directly (no colour
    conversion); anything else goes through libswscale."""
    import cv2

    w, h = scaled_size(frame.width, frame.height, width)
    if frame.format.name in _PLANAR_8BIT:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
        return y.copy() if w == frame.width else cv2.resize(y, (w, h), interpolation=cv2.INTER_AREA)
    return frame.reformat(width=w, height=h, format="gray").to_ndarray()


def _blur(gray: np.ndarray) -> float:
    import cv2

    # 16-bit holds the 4-neighbour Laplacian of 8-bit pixels exactly (|value| <= 4 * 255), in a quarter of
    # the memory float64 takes; the variance is then summed in double, as numpy's var would.
    if gray.dtype != np.uint8:
        return float(cv2.Laplacian(gray, cv2.CV_64F).var())
    _, sd = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
    return float(sd[0, 0]) ** 2


def _flow_magnitude(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 2, 9, 2, 5, 1.1, 0)
    return float(np.sqrt((flow ** 2).sum(axis=2)).mean())


def _hist(gray: np.ndarray) -> np.ndarray:
    return np.bincount((gray >> 4).ravel(), minlength=16) / gray.size


def _motion(pairs: list[tuple[np.ndarray, np.ndarray]], settings: "ProbeSettings") -> float:
    """Median optical flow over frame pairs; a pair across a hard cut measures the cut, not motion."""
    cut = _cuts([a for a, _ in pairs], [b for _, b in pairs], settings)
    flows = [_flow_magnitude(a, b) for (a, b), c in zip(pairs, cut) if not c]
    return float(np.median(flows)) if flows else 0.0


def _black_ratio(frames: list[np.ndarray], settings: "ProbeSettings") -> float:
    stack = np.stack(frames)
    dark = stack.mean(axis=(1, 2)) < settings.black_luma
    if dark.any():  # the percentile (the costly part) only where the mean already passes
        p98 = np.percentile(stack[dark].reshape(int(dark.sum()), -1).astype(np.float32), 98, axis=1)
        dark[dark] = p98 < settings.black_luma * 2
    return float(np.mean(dark))


def _mean_diffs(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Mean absolute luma difference of each pair (a[i], b[i])."""
    if not a:
        return np.zeros(0)
    return np.abs(np.stack(a).astype(np.float32) - np.stack(b).astype(np.float32)).mean(axis=(1, 2))


def _cuts(a: list[np.ndarray], b: list[np.ndarray], settings: "ProbeSettings") -> np.ndarray:
    """Whether each pair (a[i], b[i]) is a hard cut: the histogram and the pixels both change a lot."""
    if not a:
        return np.zeros(0, bool)
    hists = {id(x): _hist(x) for x in (*a, *b)}  # consecutive pairs share frames: one histogram each
    ha, hb = np.stack([hists[id(x)] for x in a]), np.stack([hists[id(x)] for x in b])
    hist_change = np.abs(hb - ha).sum(axis=1) / 2
    return (hist_change > settings.cut_hist_distance) & (_mean_diffs(a, b) > 20)


def probe_file(path: str | Path, media_type: str = "video", settings: ProbeSettings = ProbeSettings(),
               given: dict | None = None) -> dict:
    """Facts and scores of one local file; never raises for a bad file (decodable=False + reason).
    `given`: a video's scores from its transcode report (check_report_scores), used instead of decoding."""
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
            _probe_video(path, row, settings, given)
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


def _probe_video(path: Path, row: dict, settings: ProbeSettings, given: dict | None = None) -> None:
    sampled = settings.scores and settings.decode == "sampled"
    try:
        with open_video(path) as (c, info):  # one open: the sampled path reads on from the facts' container
            row.update(probe_container=info.container, probe_codec=info.codec,
                       probe_width=float(info.display_width), probe_height=float(info.display_height),
                       probe_fps=info.fps or None, probe_duration=info.duration or None,
                       probe_frames=info.frames, probe_rotation=info.rotation, probe_pix_fmt=info.pix_fmt,
                       probe_audio=info.has_audio)
            if given and settings.scores and _probe_given(c, path, row, info, given):
                return
            if sampled and _probe_sampled(c, path, row, settings, info):
                return
    except InvalidArgument as e:  # raised on opening only: the file's facts are unreadable
        row.update(decodable=False, probe_error=f"undecodable: {e}")
        return
    _probe_full(path, row, settings, info)


def _probe_full(path: Path, row: dict, settings: ProbeSettings, info) -> None:
    """Every frame decoded in order (up to max_decode_frames): the reference the sampled scores are tested
    against, and the metadata-only mode (first frame, then seeks to the middle and the end)."""
    import av

    expected = max(1, info.frames)
    key_frames: dict[str, object] = {}
    tiny: list[np.ndarray] = []
    decoded, last_t, error = 0, 0.0, None
    with av.open(str(path), metadata_errors="ignore", options=SAFE_OPEN_OPTIONS) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        blurs: list[float] = []
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
                    tiny.append(_gray(frame, settings.analysis_width))
                    blurs.append(_blur(_gray(frame, settings.blur_width)))
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
    row.update(frame_scores(blurs, tiny, expected, settings))


def frame_scores(blurs: list[float], tiny: list[np.ndarray], expected: int, settings: ProbeSettings) -> dict:
    """The scores of a clip from every frame in order: `blurs` (each frame's _blur at blur_width) and `tiny`
    (each frame at analysis_width). `expected` is the clip's frame count, which spaces the flow pairs. The
    full decode and the transcoder (on the frames it encodes) both score with this."""
    stride = max(1, min(expected, settings.max_decode_frames) // max(1, settings.flow_pairs))
    pairs = [(tiny[d - 1], tiny[d]) for d in range(1, len(tiny)) if (d - 1) % stride == 0][:settings.flow_pairs]
    out = {"blur": float(np.mean(blurs)), "motion": _motion(pairs, settings),
           "black_ratio": _black_ratio(tiny, settings), "frozen_ratio": 0.0, "scene_cuts": 0}
    if len(tiny) > 1:
        out["frozen_ratio"] = float(np.mean(_mean_diffs(tiny[:-1], tiny[1:]) < settings.frozen_diff))
        out["scene_cuts"] = int(np.sum(_cuts(tiny[:-1], tiny[1:], settings)))
    return out


# ---------------------------------------------------------------- scores computed while transcoding

def scores_version(settings: ProbeSettings) -> str:
    """What report scores are valid for: the probe version and every setting a score depends on (not the
    decode mode: report scores are taken from every frame, as a full decode scores)."""
    keep = {k: v for k, v in asdict(settings).items() if k not in ("scores", "decode", "samples")}
    return hashlib.sha256(json.dumps([PROBE_VERSION, keep], sort_keys=True).encode()).hexdigest()[:16]


class FrameScorer:
    """Scores of a clip fed frame by frame as gray pictures at blur_width (the transcoder's second ffmpeg
    output), from a `width` x `height` canvas: the full decode's scores (frame_scores) and key-frame hash."""

    def __init__(self, width: int, height: int, settings: ProbeSettings = ProbeSettings()):
        self.settings = settings
        self.sharp_size = scaled_size(width, height, settings.blur_width)
        self.tiny_size = scaled_size(width, height, settings.analysis_width)
        self.blurs: list[float] = []
        self.tiny: list[np.ndarray] = []
        self.hashes: list[np.ndarray] = []  # every frame at 9x8 (dhash's input): the middle is known at the end

    @property
    def frame_bytes(self) -> int:
        return self.sharp_size[0] * self.sharp_size[1]

    def add(self, data: bytes) -> None:
        import cv2

        gray = np.frombuffer(data, np.uint8).reshape(self.sharp_size[1], self.sharp_size[0])
        self.hashes.append(cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA))
        if len(self.hashes) > self.settings.max_decode_frames:
            return  # past the frames a full decode analyses: only the hashes
        self.blurs.append(_blur(gray))
        tiny = gray if self.tiny_size == self.sharp_size else cv2.resize(gray, self.tiny_size,
                                                                           interpolation=cv2.INTER_AREA)
        self.tiny.append(tiny)

    def result(self) -> dict | None:
        """The report's `scores` object; None when no frame came."""
        n = len(self.hashes)
        if not n:
            return None
        phash = "".join(f"{_hash_bits(self.hashes[i]):016x}" for i in (0, n // 2, n - 1))
        return {"version": scores_version(self.settings), "frames": n, "phash": phash,
                **frame_scores(self.blurs, self.tiny, n, self.settings)}


_PHASH_HEX = frozenset("0123456789abcdef")


def check_report_scores(scores, settings: ProbeSettings) -> tuple[dict | None, str | None]:
    """(scores to use, why they are refused) for a transcode report's `scores` object. (None, None) when
    they were computed with other settings: the clip is then probed by decoding like one without."""
    if not isinstance(scores, dict):
        return None, f"scores are a {type(scores).__name__}, not an object"
    if scores.get("version") != scores_version(settings):
        return None, None
    frames = scores.get("frames")
    if type(frames) is not int or frames < 1:
        return None, f"frames is {frames!r}, not a count of at least 1"
    bounds = {"blur": (0.0, (8 * 255.0) ** 2),  # a Laplacian of 8-bit pixels is within +-8*255
              "motion": (0.0, float(settings.analysis_width)),
              "black_ratio": (0.0, 1.0), "frozen_ratio": (0.0, 1.0), "scene_cuts": (0, frames - 1)}
    out: dict = {}
    for name, (lo, hi) in bounds.items():
        v = scores.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or name == "scene_cuts" and not isinstance(v, int):
            return None, f"{name} is {v!r}, not a number"
        if not lo <= v <= hi or not math.isfinite(v):  # the range first: an int beyond float64 fails it, not isfinite
            return None, f"{name} is {str(v)[:40]}, outside [{lo}, {hi}]"
        out[name] = v
    phash = scores.get("phash")
    if not isinstance(phash, str) or len(phash) != 48 or not set(phash) <= _PHASH_HEX:
        return None, f"phash is {str(phash)[:60]!r}, not 48 hex digits"
    return {**out, "phash": phash, "frames": frames}, None


def _probe_given(c, path: Path, row: dict, info, given: dict) -> bool:
    """A transcoded clip's row from its report scores plus the packet scan (damage, frame count), no decode;
    False (nothing done) when the scan cannot judge the codec or the frame count is not the report's."""
    scan = _rescan(c)
    if scan is None:
        return False
    if scan.error is None and len(scan.times) != given["frames"]:
        return False  # the scores describe another picture: this clip's own decode decides
    row["probe_frames"] = len(scan.times)
    if scan.error:
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: {scan.error}")
    else:
        row["decodable"] = True
    row.update({k: v for k, v in given.items() if k != "frames"})
    return True


# ---------------------------------------------------------------- sampled decode

def _nal_length_size(stream) -> int | None:
    """Length-prefix size of H.264/HEVC NAL units as MP4 and Matroska store them (avcC/hvcC); None for
    other codecs and start-code streams, whose damage only a decode finds."""
    cc = stream.codec_context
    extra = bytes(cc.extradata or b"")
    if cc.name == "h264" and len(extra) >= 5 and extra[0] == 1:
        return (extra[4] & 3) + 1
    if cc.name == "hevc" and len(extra) >= 23 and extra[0] == 1:
        return (extra[21] & 3) + 1
    return None


def _nal_check(data: bytes, size: int, h264: bool) -> tuple[str | None, bool]:
    """(why the decoder would refuse this packet, whether other frames may reference it). Refused: an empty
    NAL unit or one whose length runs past the packet's end (the 'Invalid data' a full decode raises for
    overwritten or shifted bytes). Unreferenced: an H.264 packet whose slices all have nal_ref_idc 0 (the
    B frames x264 does not predict from); nothing decodes differently without it."""
    pos, end = 0, len(data)
    slices = refs = 0
    while end - pos >= 4:
        length = int.from_bytes(data[pos:pos + size], "big")
        pos += size
        if length == 0 or length > end - pos:
            return f"NAL unit of {length} bytes with {end - pos} left", True
        if h264 and 1 <= data[pos] & 0x1F <= 5:
            slices += 1
            refs += data[pos] >> 5 & 3 != 0
        pos += length
    return None, not h264 or not slices or refs > 0


@dataclass
class _Scan:
    times: list[float]       # every packet's time, in decode order
    pts: list[int]           # every packet's pts (None where the container has none)
    keys: list[float]        # key-frame times, sorted
    unreferenced: set[int]   # pts of packets no other frame is predicted from
    error: str | None        # damage found


def _scan_packets(container, stream, nal_size: int) -> _Scan:
    """Every packet of the stream read without decoding it: times, key frames, references and damage."""
    tb = float(stream.time_base)
    h264 = stream.codec_context.name == "h264"
    scan = _Scan([], [], [], set(), None)
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0:
                continue  # the demuxer's end-of-stream marker
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            t = float(ts * tb) if ts is not None else (scan.times[-1] if scan.times else 0.0)
            if pkt.is_corrupt:
                scan.error = f"damaged packet at {t:.2f}s"
                return scan
            err, referenced = _nal_check(bytes(pkt), nal_size, h264)
            if err:
                scan.error = f"damaged packet at {t:.2f}s ({err})"
                return scan
            scan.times.append(t)
            scan.pts.append(pkt.pts)
            if pkt.is_keyframe:
                scan.keys.append(t)
            if not referenced and pkt.pts is not None:
                scan.unreferenced.add(pkt.pts)
    except Exception as e:  # noqa: BLE001 - a demuxer error is damage, reported with where it happened
        at = f" at {scan.times[-1]:.2f}s" if scan.times else ""
        scan.error = f"{type(e).__name__}{at}: {e}"
    scan.keys.sort()
    return scan


def sample_times(start: float, span: float, keys: list[float], samples: int) -> list[float]:
    """Times to decode in [start, start + span). With at least half as many key frames as samples, key
    frames only (evenly chosen among them): each decodes without a run-up. Otherwise evenly spaced times,
    each moved to the nearest key frame when one lies within half the spacing."""
    import bisect

    n = max(1, samples)
    if len(keys) >= max(2, n // 2):
        picks = np.unique(np.round(np.linspace(0, len(keys) - 1, min(n, len(keys)))).astype(int))
        return [keys[i] for i in picks]
    spacing = span / n
    out: list[float] = []
    for i in range(n):
        t = start + (i + 0.5) * spacing
        j = bisect.bisect_left(keys, t)
        near = [keys[k] for k in (j - 1, j) if 0 <= k < len(keys)]
        best = min(near, key=lambda k: abs(k - t)) if near else None
        out.append(best if best is not None and abs(best - t) <= spacing / 2 + 1e-6 else t)
    return sorted(set(out))


def _key_frame_cuts(keys: list[float], frame_dt: float) -> int:
    """Key frames an encoder placed off its regular cadence: its scene-change detector's cuts. With fewer
    than two full intervals the cadence is unknown, so none are counted."""
    gaps = np.diff(np.asarray(keys))
    if gaps.size < 2:
        return 0
    return int(np.sum(gaps < 0.9 * gaps.max() - frame_dt))


def _rescan(c) -> _Scan | None:
    """Every packet of the open container's video from the start (the facts read the first frame); None for
    a codec whose damage only a decode finds."""
    stream = c.streams.video[0]
    nal_size = _nal_length_size(stream)
    if nal_size is None:
        return None
    c.seek(0, stream=stream, backward=True, any_frame=False)
    return _scan_packets(c, stream, nal_size)


def _probe_sampled(c, path: Path, row: dict, settings: ProbeSettings, info) -> bool:
    """Scores from sampled frames of the open container `c`; False (nothing done) for a codec whose damage
    only a full decode finds."""
    stream = c.streams.video[0]
    scan = _rescan(c)
    if scan is None:
        return False
    if scan.error is None and scan.pts and all(p is None for p in scan.pts):
        return False  # samples are found by their pts
    times, keys, error = scan.times, scan.keys, scan.error
    frame_dt = 1.0 / info.fps if info.fps else 0.04
    if error is None and stream.frames and len(times) < stream.frames:
        error = f"stream ends at {max(times, default=0):.2f}s of {info.duration:.2f}s " \
                f"({len(times)} of {stream.frames} frames)"
    row["probe_frames"] = len(times)
    picks: list[tuple] = []  # (first frame, the frame after it or None)
    if times:
        start = min(times)
        targets = sample_times(start, max(times) - start + frame_dt, keys, settings.samples)
        try:
            _decode_at(c, stream, targets, scan, start, frame_dt, picks)
        except Exception as e:  # noqa: BLE001 - damaged packets: reported like a full decode does
            error = error or f"{type(e).__name__}: {e}"
    if not picks:
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: no frame decodes"
                   + (f" ({error})" if error else ""))
        return True
    if error:
        row.update(decodable=False, probe_error=f"undecodable: {path.name}: {error}")
    else:
        row["decodable"] = True
    _sampled_scores(row, picks, keys, frame_dt, settings)
    return True


def _decode_at(c, stream, targets: list[float], scan: _Scan, start: float, frame_dt: float,
               picks: list[tuple]) -> None:
    """Append (frame at t, the frame shown after it) to `picks` for each target t. Targets are decoded in runs:
    a seek to the key frame before the run's first target, then on through the run, feeding the decoder only
    the sampled packets and the ones other frames are predicted from (x264 predicts from half its frames),
    then draining it, so no packet after the run's last sample is decoded."""
    import bisect
    import math

    tb = float(stream.time_base)
    keys, ordered = scan.keys, sorted(p for p in scan.pts if p is not None)
    runs: list[tuple[float, list[tuple[int, list[int]]]]] = []  # (key frame, [(earliest pts, pair pts)])
    for t in targets:
        lo = math.ceil((t - frame_dt / 2) / tb - 1e-6)
        i = bisect.bisect_left(ordered, lo)
        pair = ordered[i:i + 2]
        if not pair:
            continue
        key = keys[bisect.bisect_right(keys, t + 1e-6) - 1] if keys and keys[0] <= t + 1e-6 else start
        if not runs or key * (1 + 1e-9) > runs[-1][1][-1][1][-1] * tb:  # the key frame lies after the last pair
            runs.append((key, []))
        runs[-1][1].append((lo, pair))
    wanted = {p for _, run in runs for _, pair in run for p in pair}
    skip = scan.unreferenced - wanted
    for key, run in runs:
        c.seek(int(round(key / tb)), stream=stream, backward=True, any_frame=False)
        need = {p for _, pair in run for p in pair}
        got: dict[int, object] = {}
        for pkt in c.demux(stream):
            if pkt.pts in skip:
                continue
            fed = pkt.pts
            frames = list(stream.decode(pkt))
            if fed in need:
                need.discard(fed)
                if not need:  # every sampled packet is in: drain the frames the decoder holds back
                    frames += stream.decode(None)
            got.update((f.pts, f) for f in frames if f.pts in wanted)
            if not need:
                break
        for lo, _ in run:
            shown = sorted(p for p in got if p >= lo)
            if not shown:
                return
            picks.append((got[shown[0]], got[shown[1]] if len(shown) > 1 else None))


def _sampled_scores(row: dict, picks: list[tuple], keys: list[float], frame_dt: float,
                    settings: ProbeSettings) -> None:
    sharp = [_gray(a, settings.blur_width) for a, _ in picks]
    marks = (0, len(picks) // 2, len(picks) - 1)  # start, middle, end
    row["phash"] = "".join(f"{dhash(sharp[i]):016x}" for i in marks)
    firsts = [_gray(a, settings.analysis_width) for a, _ in picks]
    afters = [_gray(b, settings.analysis_width) if b is not None else None for _, b in picks]
    pairs = [(a, b) for a, b in zip(firsts, afters) if b is not None]
    row["blur"] = float(np.mean([_blur(g) for g in sharp]))
    row["motion"] = _motion(pairs, settings)
    row["black_ratio"] = _black_ratio(firsts + [b for _, b in pairs], settings)
    row["frozen_ratio"] = float(np.mean(_mean_diffs([a for a, _ in pairs], [b for _, b in pairs])
                                        < settings.frozen_diff)) if pairs else 0.0
    # Cuts in the sampled frames in time order: within a pair, and from a pair's later frame to the next sample.
    ordered = [g for a, b in zip(firsts, afters) for g in (a, b) if g is not None]
    sampled_cuts = int(np.sum(_cuts(ordered[:-1], ordered[1:], settings)))
    row["scene_cuts"] = max(sampled_cuts, _key_frame_cuts(keys, frame_dt))


# ---------------------------------------------------------------- manifest level: cache + pool

def cache_key(storage: Storage, uri: str, settings: ProbeSettings, given: dict | None = None) -> str | None:
    """Identity of an item's content without reading it: path+size+mtime, or URI+etag, with the report
    scores it was given, if any. None if absent."""
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
    blob = json.dumps([PROBE_VERSION, ident, asdict(settings)] + ([given] if given else []), sort_keys=True).encode()
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
                   cancelled: Callable[[], bool] | None = None,
                   report: dict[str, object] | None = None) -> tuple[pa.Table, ProbeStats]:
    """`table` with the probe columns filled for every row; cached items are not probed again.

    `report` (ingest.report_scores: clip -> its transcode report's scores): a video found there is not
    decoded; its scores are checked (check_report_scores: a bad value rejects the row with the reason) and
    only its packets are read, for damage. Scores of other probe settings are ignored (the clip decodes)."""
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
                         lock, report)
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
               lock: threading.Lock, report: dict[str, object] | None = None) -> dict:
    row = _empty_row()
    if ingest_error or not media:
        return row  # already rejected at ingest; nothing trustworthy to probe
    try:
        uri = resolve_media(root, media)
        storage.check(uri, "media")  # before anything touches it: a refused item says nothing of its existence
    except InvalidArgument as e:
        row.update(media_exists=False, decodable=False, probe_error=f"bad path: {e}")
        return row
    given = None
    if report and settings.scores and (media_type or "video") == "video" and location_key(uri) in report:
        given, why = check_report_scores(report[location_key(uri)], settings)
        if why:
            row.update(decodable=False, probe_error=f"bad transcode report scores for {uri}: {why}")
            return row
    key = cache_key(storage, uri, settings, given)
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
            row = probe_file(local, media_type or "video", settings, given)
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
