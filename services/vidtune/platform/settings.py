"""Settings every process reads from its environment (the chart and `vidtune up` set them)."""
from __future__ import annotations

import os

from .storage import S3_SCHEME


def bucket() -> str:
    return os.environ.get("VIDTUNE_BUCKET", "vidtune")


def jobs_root() -> str:
    """Where job records live; an s3:// prefix on a cluster, may be a local directory for tests."""
    return os.environ.get("VIDTUNE_JOBS_ROOT", f"{S3_SCHEME}{bucket()}/jobs")


def workers(default: int = 2) -> int:
    return int(os.environ.get("VIDTUNE_WORKERS", default))
