"""What the trust-boundary tests plant and look for: a secret in local files, and where it may leak to."""
from __future__ import annotations

import subprocess
import sys

SECRET = b"vt-canary-7f3c-do-not-leak"


def leaked_bytes(storage: Storage, bucket: str) -> int:
    """How many bytes of the secret's occurrences are anywhere in the bucket (0 when nothing leaked)."""
    return sum(storage.read_bytes(u).count(SECRET) * len(SECRET) for u in storage.list(bucket + "/"))


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "vidtune.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
