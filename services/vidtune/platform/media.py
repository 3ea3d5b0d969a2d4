"""Media facts read in-process with PyAV (no ffprobe subprocess per file), and media-type detection."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidArgument
from .limits import limits

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mts", ".m2ts", ".ts", ".mpg", ".mpeg",
                    ".mxf", ".flv", ".wmv", ".m4v", ".3gp"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Demuxers ffmpeg may use on archive input; anything else (playlists, concat lists, network
# formats) is refused so one input file can never make ffmpeg read other files or hosts.
SAFE_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,mpeg,mxf,flv,asf,m4v,h264,hevc,dv,"
                 "ogg,gif,yuv4mpegpipe,mpegvideo")

SAFE_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": SAFE_DEMUXERS}
# For reading facts: the stream search reads headers and packets but decodes nothing. Its probing decode costs
# what a frame costs (60 ms for one 680 kB key frame) and came before the pixel limit was checked. Formats
# whose streams appear only while reading (MPEG-TS/PS) still probe by decoding: options reach known streams.
FACTS_OPEN_OPTIONS = {**SAFE_OPEN_OPTIONS, "skip_frame": "all"}


def media_type(path: str) -> str:
    """'video', 'image' or 'unknown', from the file name."""
    ext = Path(str(path)).suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "unknown"


@dataclass
class VideoInfo:
    container: str
    codec: str
    width: int            # as stored (before rotation)
    height: int
    display_width: int    # as shown (after rotation metadata)
    display_height: int
    rotation: int         # degrees, 0/90/180/270
    fps: float
    duration: float       # seconds
    frames: int           # counted from the container; estimated from fps*duration when absent
    pix_fmt: str
    bit_depth: int
    has_audio: bool
    variable_frame_rate: bool

    def as_dict(self) -> dict:
        return asdict(self)


def probe_video(path: str | Path, label: str | None = None) -> VideoInfo:
    """Stream facts of a local video file; raises InvalidArgument naming the file (or `label`, e.g. the
    object URI it was downloaded from) and the reason."""
    with open_video(path, label) as (_, info):
        return info


@contextmanager
def open_video(path: str | Path, label: str | None = None):
    """(open PyAV container, its VideoInfo) for a caller that reads on from the same container (one open per
    file); facts are read as probe_video does and fail the same way. Reading them decodes the first frame:
    seek before decoding on."""
    import av

    label = label or str(path)
    try:
        c = av.open(str(path), metadata_errors="ignore", options=FACTS_OPEN_OPTIONS)
    except Exception as e:  # PyAV raises many error types for damaged files
        raise _unreadable(label, e) from None
    with c:
        try:
            info = _facts(c, label)
        except InvalidArgument:
            raise
        except Exception as e:  # noqa: BLE001
            raise _unreadable(label, e) from None
        yield c, info


def _unreadable(label: str, e: Exception) -> InvalidArgument:
    reason = getattr(e, "strerror", None) or str(e)
    return InvalidArgument(f"{label}: not a readable video ({reason})")


def _facts(c, label: str) -> VideoInfo:
    if not c.streams.video:
        raise InvalidArgument(f"{label}: no video stream")
    v = c.streams.video[0]
    cc = v.codec_context
    rate = v.average_rate or v.guessed_rate or v.base_rate
    fps = float(rate) if rate else 0.0
    if v.duration is not None and v.time_base:
        duration = float(v.duration * v.time_base)
    elif c.duration:
        duration = c.duration / 1_000_000
    else:
        duration = 0.0
    frames = int(v.frames) if v.frames else int(round(fps * duration))
    w, h = int(cc.width), int(cc.height)
    limits().check_pixels(w, h, label)  # the size the container states, before any frame is decoded
    rotation, first = _first_frame(c)
    if first is not None and (first.width, first.height) != (w, h):
        # The stream's own size wins over a header that says otherwise (a lying header would let every later
        # decode, and ffmpeg's, run at a size the limit refuses): checked again before anything decodes more.
        stated, w, h = f"{w}x{h}", int(first.width), int(first.height)
        limits().check_pixels(w, h, f"{label} (its frames; the container states {stated})", "after its first frame")
    dw, dh = (h, w) if rotation in (90, 270) else (w, h)
    pix = cc.pix_fmt or ""  # set by the first frame's decode, when the stream search decoded none
    depth = 10 if any(t in pix for t in ("10", "p010")) else 12 if "12" in pix else 8
    real = v.guessed_rate or rate
    vfr = bool(v.average_rate and real and abs(float(v.average_rate) - float(real)) > 0.01)
    return VideoInfo(container=c.format.name, codec=cc.name, width=w, height=h, display_width=dw,
                     display_height=dh, rotation=rotation, fps=round(fps, 3), duration=round(duration, 3),
                     frames=frames, pix_fmt=pix, bit_depth=depth, has_audio=bool(c.streams.audio),
                     variable_frame_rate=vfr)


def _first_frame(container):
    """(rotation as 0/90/180/270, the first frame or None when it does not decode). The rotation comes from
    the display matrix, which PyAV exposes on decoded frames. A first packet that is a key frame is decoded
    alone and drained out (one frame decoded, not the decoder's reorder delay of a few more)."""
    try:
        stream = container.streams.video[0]
        pkt = next(container.demux(stream))
        frames = stream.decode(pkt) + stream.decode(None) if pkt.is_keyframe else []
        frame = frames[0] if frames else next(container.decode(stream))
        deg = float(getattr(frame, "rotation", 0) or 0)
    except Exception:  # noqa: BLE001 - an undecodable first frame is reported by the decode checks
        return 0, None
    return int(round(deg)) % 360 // 90 * 90, frame


def check_image_pixels(source, label: str) -> tuple[int, int]:
    """(width, height) of an image file or bytes, read from its header; refuses an image whose decoded size
    exceeds VIDTUNE_MAX_PIXELS before a single pixel is decoded (a small PNG can decode to gigabytes)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            width, height = img.size  # header only: Image.open is lazy
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidArgument(f"{label}: not a readable image ({e})") from None
    limits().check_pixels(width, height, label)
    return width, height
