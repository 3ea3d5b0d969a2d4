"""What the trust-boundary tests plant and look for: a secret in local files, and where it may leak to."""
from __future__ import annotations

SECRET = b"vt-canary-7f3c-do-not-leak"


def leaked_bytes(storage, bucket: str) -> int:
    """How many bytes of the secret's occurrences are anywhere in the bucket (0 when nothing leaked)."""
    return sum(storage.read_bytes(u).count(SECRET) * len(SECRET) for u in storage.list(bucket + "/"))
