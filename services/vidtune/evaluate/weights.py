"""Model weights from a local path or an object-store URI, as a local path the model libraries can open.

A URI is either one object (a TorchScript file, a checkpoint) or a prefix holding a bundle (an
open_clip config, weights and Hugging Face tokenizer files). Downloads are cached under
VIDTUNE_CACHE_DIR/weights (default ~/.cache/vidtune/weights) keyed by the URI and object sizes, so repeated scoring
runs do not fetch the same gigabytes again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from vidtune.platform.errors import NotFound
from vidtune.platform.settings import cache_dir
from vidtune.platform.storage import Storage, is_s3


def cache_root() -> Path:
    return cache_dir() / "weights"


def local_weights(uri: str, storage: Storage | None = None) -> Path:
    """A local file or directory with the content of `uri` (returned as is when already local)."""
    if not is_s3(uri):
        p = Path(uri).expanduser()
        if not p.exists():
            raise NotFound(f"model weights {uri} do not exist")
        return p
    storage = storage or Storage()
    if storage.exists(uri):
        size = storage.size(uri)
        key = hashlib.sha256(f"{uri}|{size}".encode()).hexdigest()[:16]
        dst = cache_root() / key / uri.rstrip("/").rsplit("/", 1)[-1]
        if not dst.exists() or dst.stat().st_size != size:
            storage.download(uri, dst)
        return dst
    prefix = uri.rstrip("/") + "/"
    objects = list(storage.list(prefix))
    if not objects:
        raise NotFound(f"model weights {uri} do not exist (no object and no objects below it)")
    sizes = "|".join(f"{o}:{storage.size(o)}" for o in objects)
    key = hashlib.sha256(f"{uri}|{sizes}".encode()).hexdigest()[:16]
    root = cache_root() / key
    for obj in objects:
        dst = root / obj[len(prefix):]
        if not dst.exists():
            storage.download(obj, dst)
    return root
