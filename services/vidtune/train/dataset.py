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


def load_frames(path: str | Path, height: int, width: int, num_frames: int):
    """Decoded frames (PIL images) of a local video or image, cropped and resized like upstream training."""
    suffix = Path(path).suffix.lower()
    if suffix not in MEDIA_EXTENSIONS:
        raise InvalidArgument(f"{path}: unsupported media type {suffix or '(none)'}")
    try:
        frames = _operator(height, width, num_frames)(str(path))
    except Exception as e:  # any decoder error: the sample is rejected with the reason, the run continues
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise InvalidArgument(f"{path}: cannot decode ({type(e).__name__}: {detail})") from None
    if not frames:
        raise InvalidArgument(f"{path}: no frames")
    return frames
