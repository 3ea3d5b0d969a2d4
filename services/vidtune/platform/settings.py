"""Settings every process reads from its environment (the chart and `vidtune up` set them)."""
from __future__ import annotations

import os
from pathlib import Path

from .storage import S3_SCHEME


def bucket() -> str:
    return os.environ.get("VIDTUNE_BUCKET", "vidtune")


def jobs_root() -> str:
    """Where job records live; an s3:// prefix on a cluster, may be a local directory for tests."""
    return os.environ.get("VIDTUNE_JOBS_ROOT", f"{S3_SCHEME}{bucket()}/jobs")


def workers(default: int = 2) -> int:
    return int(os.environ.get("VIDTUNE_WORKERS", default))


def cache_dir() -> Path:
    """Downloaded weights, built tiny models and logs: VIDTUNE_CACHE_DIR (a writable volume in pods,
    where the root filesystem is read-only), else ~/.cache/vidtune."""
    return Path(os.environ.get("VIDTUNE_CACHE_DIR") or Path.home() / ".cache" / "vidtune")
