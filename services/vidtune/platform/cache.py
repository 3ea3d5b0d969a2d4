"""Local copies of objects that libraries need as files (model weights, tokenizers, TorchScript).

Weights are immutable by convention, so a copy is reused while every object's size matches; the first
use of an `s3://` location downloads it into the cache directory, later uses read the disk.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import NotFound
from .settings import cache_dir
from .storage import Storage, basename, is_s3


def cached_local(location: str, storage: Storage | None = None, what: str = "model weights",
                 root: Path | None = None) -> Path:
    """A local path with the content of `location`: the path itself when local; for an object URI, a
    cached copy of that one object, or of every object below it when it is a prefix (a bundle such as
    a tokenizer directory)."""
    if not is_s3(location):
        path = Path(location).expanduser()
        if not path.exists():
            raise NotFound(f"{what} {location} do not exist")
        return path
    storage = storage or Storage()
    root = Path(root or cache_dir() / "objects")
    if storage.exists(location):
        dst = root / _digest(location) / basename(location)
        _refresh(storage, location, dst)
        return dst
    prefix = location.rstrip("/") + "/"
    objects = list(storage.list(prefix))
    if not objects:
        raise NotFound(f"{what} {location} do not exist (no object, and no objects below it)")
    folder = root / _digest(prefix)
    for uri in objects:
        _refresh(storage, uri, folder / uri[len(prefix):])
    return folder


def _digest(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _refresh(storage: Storage, uri: str, dst: Path) -> None:
    if not (dst.exists() and dst.stat().st_size == storage.size(uri)):
        storage.download(uri, dst)
