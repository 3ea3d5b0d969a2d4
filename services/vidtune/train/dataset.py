"""The training dataset: the quality service's export, `metadata.csv` (video,prompt) with media below it.

Media paths in the csv are relative to the dataset base (a directory or an s3:// prefix). Frames go
through DiffSynth's own video/image operators, so cropping, resizing and the 4n+1 frame rule are
exactly those of upstream training; only the video reader is PyAV (in-process) instead of an ffmpeg
subprocess per file.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

from ..platform.errors import InvalidArgument, NotFound
from ..platform.media import SAFE_OPEN_OPTIONS
from ..platform.storage import Storage, join

MEDIA_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".wmv", ".flv", ".gif",
                    ".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class Sample:
    """One training example: a stable id (its relative path), the media URI and the caption."""

    id: str
    uri: str
    prompt: str

    def cache_key(self, settings: str) -> str:
        """Output key of this sample's cache entry: derived from the input and the settings only."""
        return hashlib.sha256(f"{self.id}\0{self.prompt}\0{settings}".encode()).hexdigest()[:24]


def read_metadata(dataset: str, storage: Storage) -> list[Sample]:
    """Samples listed in `<dataset>/metadata.csv`, in file order, with a clear error for a bad file."""
    meta_uri = dataset if dataset.endswith(".csv") else join(dataset, "metadata.csv")
    base = meta_uri.rsplit("/", 1)[0] if "/" in meta_uri else "."
    try:
        text = storage.read_text(meta_uri)
    except NotFound:
        raise NotFound(f"dataset {dataset}: no metadata.csv (expected columns video,prompt)") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise InvalidArgument(f"dataset {meta_uri} lists no samples")
    columns = set(rows[0])
    media_col = "video" if "video" in columns else "image" if "image" in columns else None
    if media_col is None or "prompt" not in columns:
        raise InvalidArgument(f"{meta_uri}: columns are {sorted(columns)}; expected video (or image) and prompt")
    samples, seen = [], set()
    for line, row in enumerate(rows, start=2):
        rel = (row.get(media_col) or "").strip()
        if not rel:
            raise InvalidArgument(f"{meta_uri} line {line}: empty {media_col} path")
        if rel in seen:
            continue  # a duplicated row would silently weight one sample twice
        seen.add(rel)
        uri = rel if rel.startswith("s3://") or rel.startswith("/") else join(base, rel)
        samples.append(Sample(id=rel, uri=uri, prompt=(row.get("prompt") or "").strip()))
    return samples


class _PyAVReader:
    """The part of imageio's reader interface DiffSynth's LoadVideo uses, decoding in-process with PyAV.

    imageio's ffmpeg plugin starts an ffmpeg process per video; forking next to gRPC and torch threads
    is fragile and slow, while PyAV decodes in this process. Frames are decoded on demand.
    """

    def __init__(self, path: str):
        import av

        self.container = av.open(str(path), options=SAFE_OPEN_OPTIONS)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._decoded = self.container.decode(self.stream)
        self._frames: list = []

    def _fill(self, n: int) -> None:
        while len(self._frames) < n:
            try:
                frame = next(self._decoded)
            except StopIteration:
                break
            self._frames.append(frame.to_ndarray(format="rgb24"))

    def get_meta_data(self) -> dict:
        rate = self.stream.average_rate or self.stream.guessed_rate or 24
        meta = {"fps": float(rate)}
        if self.stream.duration and self.stream.time_base:
            meta["duration"] = float(self.stream.duration * self.stream.time_base)
        return meta

    def count_frames(self) -> int:
        self._fill(1 << 30)
        return len(self._frames)

    def get_data(self, index: int):
        self._fill(index + 1)
        return self._frames[index]

    def close(self) -> None:
        self.container.close()


def _operator(height: int, width: int, num_frames: int):
    """DiffSynth's media operators (crop/resize, 4n+1 frame rule), with the video reader swapped for PyAV."""
    from diffsynth.core.data.operators import (ImageCropAndResize, LoadGIF, LoadImage, LoadVideo,
                                               RouteByExtensionName, ToList)

    class PyAVLoadVideo(LoadVideo):
        def get_reader(self, data: str):
            return _PyAVReader(data)

    resize = ImageCropAndResize(height, width, None, 16, 16)
    return RouteByExtensionName(operator_map=[
        (("jpg", "jpeg", "png", "webp", "bmp"), LoadImage() >> resize >> ToList()),
        (("gif",), LoadGIF(num_frames, 4, 1, frame_processor=resize)),
        (("mp4", "avi", "mov", "wmv", "mkv", "flv", "webm"), PyAVLoadVideo(num_frames, 4, 1, frame_processor=resize)),
    ])


def _detail(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no detail'}"


def load_frames(path: str | Path, height: int, width: int, num_frames: int):
    """Decoded frames (PIL images) of a local video or image, cropped and resized like upstream training."""
    suffix = Path(path).suffix.lower()
    if suffix not in MEDIA_EXTENSIONS:
        raise InvalidArgument(f"{path}: unsupported media type {suffix or '(none)'}")
    try:
        frames = _operator(height, width, num_frames)(str(path))
    except Exception as e:  # any decoder error: the sample is rejected with the reason, the run continues
        raise InvalidArgument(f"{path}: cannot decode ({_detail(e)})") from None
    if not frames:
        raise InvalidArgument(f"{path}: no frames")
    return frames


# -- buckets and clip windows ---------------------------------------------------------------------------
# With buckets on, a clip keeps its shape: it goes to the bucket size nearest its aspect ratio at one pixel
# area, and yields one or more windows of consecutive frames (which ones: the extraction mode).

EXTRACTIONS = ("head", "chunk", "slide", "uniform")


@dataclass(frozen=True)
class Bucket:
    height: int
    width: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}"

    @classmethod
    def parse(cls, name: str) -> "Bucket":
        h, w, f = (int(x) for x in name.split("x"))
        return cls(h, w, f)


def bucket_sizes(area: int, step: int, max_aspect: float) -> list[tuple[int, int]]:
    """(height, width) pairs, multiples of `step`, each the largest width for its height within `area`
    pixels, with width/height and height/width at most `max_aspect`."""
    sizes = []
    tallest = int(math.sqrt(area * max_aspect)) + step  # beyond it h / w exceeds max_aspect
    for h in range(step, min(area // step, tallest) + 1, step):
        w = area // h // step * step
        if w >= step and max(h / w, w / h) <= max_aspect + 1e-9:
            sizes.append((h, w))
    return sizes


@dataclass(frozen=True)
class Window:
    """Frames [start, start + bucket.frames) of a sample, resized and cropped to the bucket's size."""

    sample: Sample
    bucket: Bucket
    start: int

    @property
    def id(self) -> str:
        return f"{self.sample.id}[{self.start}:{self.start + self.bucket.frames}]"

    @property
    def prompt(self) -> str:
        return self.sample.prompt

    def cache_key(self, settings: str) -> str:
        return self.sample.cache_key(f"{settings}\0{self.bucket.name}\0{self.start}")


def cache_name(item: Sample | Window, settings: str) -> str:
    """Where an item's cache entry lives below the cache prefix: one folder per bucket."""
    key = item.cache_key(settings) + ".pt"
    return f"{item.bucket.name}/{key}" if isinstance(item, Window) else key


@dataclass(frozen=True)
class BucketPlan:
    """Which bucket and windows a clip gets: a pure function of its size and frame count."""

    sizes: tuple[tuple[int, int], ...]
    frames: tuple[int, ...]          # 4n+1 counts, ascending
    extraction: str = "head"
    stride: int = 1                  # slide: frames between window starts
    windows: int = 1                 # uniform: windows per clip

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The bucket size nearest the clip's aspect ratio (in log ratio; a tie goes to the larger area)."""
        ratio = math.log(width / height)
        return min(self.sizes, key=lambda hw: (abs(math.log(hw[1] / hw[0]) - ratio), -hw[0] * hw[1]))

    def frames_for(self, n_frames: int, label: str) -> int:
        """The longest frame count the clip can fill; an image (one frame) trains as one frame."""
        if n_frames == 1:
            return 1
        fits = [f for f in self.frames if f <= n_frames]
        if not fits:
            raise InvalidArgument(f"{label}: {n_frames} frames, shorter than the shortest bucket "
                                  f"({self.frames[0]} frames)")
        return fits[-1]

    def starts(self, n_frames: int, frames: int) -> list[int]:
        last = n_frames - frames
        if self.extraction == "head" or last == 0:
            return [0]
        if self.extraction == "chunk":
            return list(range(0, last + 1, frames))
        if self.extraction == "slide":
            return list(range(0, last + 1, self.stride))
        k = min(self.windows, last + 1)  # uniform: first to last frame, evenly
        return sorted({round(i * last / (k - 1)) for i in range(k)}) if k > 1 else [0]

    def plan(self, width: int, height: int, n_frames: int, label: str) -> tuple[Bucket, list[int]]:
        h, w = self.size_for(width, height)
        frames = self.frames_for(n_frames, label)
        return Bucket(h, w, frames), self.starts(n_frames, frames)


def _resizer(bucket: Bucket):
    from diffsynth.core.data.operators import ImageCropAndResize

    return ImageCropAndResize(bucket.height, bucket.width, None, 16, 16)


def _probe(path: str | Path) -> tuple[int, int, int]:
    """(width, height, frames) of a video's first stream; frames counted from its packets (exact, no decoding)."""
    import av

    with av.open(str(path), options=SAFE_OPEN_OPTIONS) as container:
        stream = container.streams.video[0]
        n = sum(1 for p in container.demux(stream) if p.size and p.pts is not None)
        return stream.codec_context.width, stream.codec_context.height, n


def clip_windows(path: str | Path, plan: BucketPlan, label: str | None = None):
    """(bucket, starts, iterator of (start, frames)) for a local video or image.

    Frames are decoded once, in order, each resized as it arrives; only frames a pending window still
    needs are kept, so a long clip never sits in memory whole.
    """
    label = label or str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in MEDIA_EXTENSIONS:
        raise InvalidArgument(f"{label}: unsupported media type {suffix or '(none)'}")
    if suffix in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        from PIL import Image

        try:
            image = Image.open(path).convert("RGB")
        except Exception as e:
            raise InvalidArgument(f"{label}: cannot decode ({_detail(e)})") from None
        bucket, starts = plan.plan(image.width, image.height, 1, label)
        return bucket, starts, iter([(0, [_resizer(bucket)(image)])])
    import av

    try:
        width, height, n_frames = _probe(path)
    except Exception as e:
        raise InvalidArgument(f"{label}: cannot decode ({_detail(e)})") from None
    if not n_frames or not width or not height:
        raise InvalidArgument(f"{label}: no frames")
    bucket, starts = plan.plan(width, height, n_frames, label)
    return bucket, starts, _decode_windows(path, bucket, starts, n_frames, label)


def _decode_windows(path, bucket: Bucket, starts: list[int], n_frames: int, label: str):
    import av
    from PIL import Image

    resize, f = _resizer(bucket), bucket.frames
    pending, kept, index = list(starts), {}, -1
    try:
        container = av.open(str(path), options=SAFE_OPEN_OPTIONS)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
    except Exception as e:
        raise InvalidArgument(f"{label}: cannot decode ({_detail(e)})") from None
    try:
        for frame in container.decode(stream):
            index += 1
            if not pending:
                break
            if any(s <= index < s + f for s in pending):
                kept[index] = resize(Image.fromarray(frame.to_ndarray(format="rgb24")))
            while pending and index == pending[0] + f - 1:
                start = pending.pop(0)
                yield start, [kept[i] for i in range(start, start + f)]
                for i in [i for i in kept if not pending or i < pending[0]]:
                    del kept[i]
    except Exception as e:
        raise InvalidArgument(f"{label}: cannot decode frame {index + 1} ({_detail(e)})") from None
    finally:
        container.close()
    if pending:
        raise InvalidArgument(f"{label}: {index + 1} of {n_frames} frames decodable; the window at frame "
                              f"{pending[0]} cannot be filled")
