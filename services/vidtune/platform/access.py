"""The data-access policy: which URIs a service may read, write and list, wherever the URI came from.

A request field, a line of a transcode manifest, a row of metadata.csv, a prompt's first-frame image, the
weights of a training config, a reference clip: every one is checked by the same `AccessPolicy.check`
before a byte is read. The service's `Storage` carries the policy and checks every call, so a place that
forgets to ask still cannot read a pod's own files; the places that read URIs out of files also ask first,
so a refused item is recorded with its reason and the rest of the batch goes on.

Settings (the service's environment):
  VIDTUNE_ALLOW_LOCAL_PATHS=1   local paths allowed (the single-machine stack); otherwise only s3:// URIs
  VIDTUNE_S3_BUCKETS=a,b        the buckets this service may touch (unset: any bucket its credentials reach)
  VIDTUNE_S3_PREFIX=p/          every key must start with it; listings are confined to it
  VIDTUNE_CREATE_BUCKETS=0      the service never creates buckets (on a cluster the install hook does)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import FailedPrecondition, InvalidArgument

S3_SCHEME = "s3://"
READ, WRITE, LIST = "read", "write", "list"


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class AccessPolicy:
    allow_local: bool = False
    buckets: frozenset[str] = field(default_factory=frozenset)  # empty: any bucket
    prefix: str = ""
    create_buckets: bool = True

    @classmethod
    def from_env(cls, env: dict | None = None) -> "AccessPolicy":
        env = os.environ if env is None else env
        buckets = frozenset(b.strip() for b in env.get("VIDTUNE_S3_BUCKETS", "").split(",") if b.strip())
        return cls(allow_local=env.get("VIDTUNE_ALLOW_LOCAL_PATHS") == "1", buckets=buckets,
                   prefix=env.get("VIDTUNE_S3_PREFIX", ""),
                   create_buckets=_truthy(env.get("VIDTUNE_CREATE_BUCKETS"), True))

    def check(self, uri: str, what: str = "uri", purpose: str = READ) -> str:
        """`uri` when this service may `purpose` it; else InvalidArgument naming `what`, the URI and the reason."""
        from .storage import split_uri

        uri = str(uri or "").strip()
        if not uri:
            raise InvalidArgument(f"{what}: empty URI")
        if "\x00" in uri:
            raise InvalidArgument(f"{what}: {uri!r} contains a NUL byte")
        if not uri.startswith(S3_SCHEME):
            if not self.allow_local:
                raise InvalidArgument(f"{what}: {uri!r} is not an s3:// URI (this service reads and writes only "
                                      "the object store; local paths are off: VIDTUNE_ALLOW_LOCAL_PATHS)")
            return uri
        try:
            bucket, key = split_uri(uri)
        except InvalidArgument as e:
            raise InvalidArgument(f"{what}: {e}") from None
        self.check_bucket(bucket, f"{what}: {uri!r}")
        if self.prefix and not self._within_prefix(key, purpose):
            raise InvalidArgument(f"{what}: {uri!r} is outside the allowed prefix {self.prefix!r} "
                                  "(VIDTUNE_S3_PREFIX)")
        return uri

    def _within_prefix(self, key: str, purpose: str) -> bool:
        if key.startswith(self.prefix):
            return True
        # Listing a parent of the prefix is narrowed to the prefix by `list_prefix`, never widened.
        return purpose == LIST and self.prefix.startswith(key)

    def check_all(self, values, what: str, purpose: str = READ) -> None:
        """Check every non-empty value of a request field (a string or a list of strings)."""
        for v in [values] if isinstance(values, str) else values or []:
            if v:
                self.check(v, what, purpose)

    def check_bucket(self, bucket: str, what: str = "bucket") -> None:
        if self.buckets and bucket not in self.buckets:
            raise InvalidArgument(f"{what}: bucket {bucket!r} is not one this service may use "
                                  f"(VIDTUNE_S3_BUCKETS: {', '.join(sorted(self.buckets))})")

    def check_bucket_creation(self, bucket: str) -> None:
        if not self.create_buckets:
            raise FailedPrecondition(f"bucket {bucket!r} does not exist and this service does not create buckets "
                                     "(VIDTUNE_CREATE_BUCKETS=0: buckets are made by the install hook)")


def service_policy() -> AccessPolicy:
    """The policy of a service process (`vidtune serve`, `vidtune worker`), from its environment."""
    return AccessPolicy.from_env()


def refusal(policy: AccessPolicy | None, uri: str, what: str) -> str:
    """The reason `uri` (read from inside a file) is refused, or "" when allowed: for recording per item."""
    if policy is None:
        return ""
    try:
        policy.check(uri, what)
    except InvalidArgument as e:
        return str(e)
    return ""
