"""One storage API over the S3 object store (minio SDK) and local paths.

Every stage takes "DIR_OR_URI" arguments: `s3://bucket/key` goes to the object store, anything else is
a local path. Cores call the same methods for both, so a stage runs unchanged on a laptop directory and
on the cluster's MinIO.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from .access import LIST, READ, WRITE, AccessPolicy
from .errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def validate_key(key: str, allowed_prefix: str = "") -> str:
    """Reject keys that could escape their place: '..', absolute, backslashes, NUL, empty parts."""
    if not key:
        raise InvalidArgument("empty object key")
    if "\x00" in key or "\\" in key:
        raise InvalidArgument(f"object key {key!r} contains a NUL or backslash")
    if key.startswith("/"):
        raise InvalidArgument(f"object key {key!r} must not start with '/'")
    parts = key.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"object key {key!r} has an empty, '.' or '..' segment")
    if allowed_prefix and not key.startswith(allowed_prefix):
        raise InvalidArgument(f"object key {key!r} is outside the allowed prefix {allowed_prefix!r}")
    return key


def split_uri(uri: str, allowed_prefix: str = "") -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"); the key is validated, a bare bucket gives key ""."""
    if not is_s3(uri):
        raise InvalidArgument(f"{uri!r} is not an s3:// URI")
    rest = uri[len(S3_SCHEME):]
    bucket, _, key = rest.partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidArgument(f"{uri!r}: bucket {bucket!r} is not a valid name (3-63 of a-z 0-9 . -)")
    if key:
        validate_key(key, allowed_prefix)
    return bucket, key


def require_object_uris(values: list[str] | str, field_name: str) -> None:
    """Refuse at submit a request field this service's access policy would refuse inside the job
    (a local path where they are off, a bad key, a bucket or prefix it may not use)."""
    AccessPolicy.from_env().check_all(values, field_name)


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with exactly one '/' between them."""
    out = str(base)
    for p in parts:
        p = str(p)
        if not p:
            continue
        out = out.rstrip("/") + "/" + p.lstrip("/")
    return out


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def normalise(location: str) -> str:
    """A location in one spelling: local paths lose `./`, doubled and trailing slashes ("./a//b/" -> "a/b"),
    so a prefix cut from a listing has the length of what the listing returns; URIs are kept as given."""
    location = str(location)
    if not location or _SCHEME.match(location):  # s3://, file://, http:// ...: as given (a policy judges them)
        return location
    return os.path.normpath(location)


def absolute(location: str) -> str:
    """A local path made absolute against this process's directory, so a service started elsewhere reads
    the same file; URIs, empty values and values that are not paths (None, numbers) pass unchanged."""
    if not isinstance(location, (str, os.PathLike)):
        return location
    location = str(location)
    if is_s3(location) or not location:
        return location
    return os.path.abspath(location)


def absolute_locations(spec: dict, fields) -> dict:
    """A spec with the local paths among its location `fields` made absolute (lists element by element)."""
    return {k: ([absolute(x) for x in v] if isinstance(v, (list, tuple)) else absolute(v)) if k in fields else v
            for k, v in spec.items()}


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


@dataclass
class S3Config:
    endpoint: str = "127.0.0.1:8333"
    access_key: str = ""
    secret_key: str = ""
    secure: bool = False
    region: str | None = None
    allowed_prefix: str = ""  # when set, every key must start with it
    # How long a call waits for an unreachable store to come back before it fails with UNAVAILABLE: a store
    # restart (a MinIO pod rescheduled) pauses running jobs instead of failing their items.
    outage_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: dict | None = None) -> "S3Config":
        """Endpoint and credentials from the environment (or a mounted secret directory).

        VIDTUNE_S3_ENDPOINT (host:port or http(s)://host:port), VIDTUNE_S3_ACCESS_KEY / _SECRET_KEY
        (falling back to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), VIDTUNE_S3_SECRET_DIR (files
        `access-key` and `secret-key`, as a Kubernetes Secret volume mounts them), VIDTUNE_S3_SECURE,
        VIDTUNE_S3_REGION, VIDTUNE_S3_PREFIX.
        """
        env = os.environ if env is None else env
        endpoint = env.get("VIDTUNE_S3_ENDPOINT", "127.0.0.1:8333")
        secure = env.get("VIDTUNE_S3_SECURE", "").lower() in ("1", "true", "yes")
        parsed = urlparse(endpoint) if "://" in endpoint else None
        if parsed is not None:
            secure = parsed.scheme == "https"
            endpoint = parsed.netloc
        access = env.get("VIDTUNE_S3_ACCESS_KEY") or env.get("AWS_ACCESS_KEY_ID", "")
        secret = env.get("VIDTUNE_S3_SECRET_KEY") or env.get("AWS_SECRET_ACCESS_KEY", "")
        secret_dir = env.get("VIDTUNE_S3_SECRET_DIR")
        if secret_dir:
            d = Path(secret_dir)
            access = (d / "access-key").read_text().strip()
            secret = (d / "secret-key").read_text().strip()
        return cls(endpoint=endpoint, access_key=access, secret_key=secret, secure=secure,
                   region=env.get("VIDTUNE_S3_REGION") or None,
                   allowed_prefix=env.get("VIDTUNE_S3_PREFIX", ""),
                   outage_seconds=float(env.get("VIDTUNE_S3_OUTAGE_SECONDS", "300")))


@dataclass
class Storage:
    """Read and write local paths and s3:// URIs through one interface."""

    config: S3Config = field(default_factory=S3Config.from_env)
    # A service's storage carries its access policy and checks every URI it is given; None (a CLI run
    # on the user's own files) checks only that object keys are well formed.
    policy: AccessPolicy | None = None
    _client: object = field(default=None, init=False, repr=False)
    _buckets_seen: set = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- the object store client, created on first use so local-only runs never need a server
    @property
    def client(self):
        if self._client is None:
            from minio import Minio

            self._client = RetryingClient(
                Minio(self.config.endpoint, access_key=self.config.access_key or None,
                      secret_key=self.config.secret_key or None, secure=self.config.secure,
                      region=self.config.region, http_client=_http_pool()),
                self.config.endpoint, self.config.outage_seconds)
        return self._client

    def check(self, uri: str, what: str = "uri", purpose: str = READ) -> str:
        """`uri` if this storage's policy lets it be used for `purpose`; else InvalidArgument with the reason."""
        return self.policy.check(uri, what, purpose) if self.policy is not None else str(uri)

    @contextlib.contextmanager
    def patience(self, seconds: float) -> Iterator[None]:
        """Calls from this thread wait at most `seconds` for an unreachable store, then fail UNAVAILABLE."""
        with self.client.patience(seconds):
            yield

    def reachable(self, timeout: float = 2.0) -> bool:
        """One quick round trip to the object store, no retries: health checks use it."""
        import urllib3
        from minio import Minio

        try:
            probe = Minio(self.config.endpoint, access_key=self.config.access_key or None,
                          secret_key=self.config.secret_key or None, secure=self.config.secure,
                          region=self.config.region or "us-east-1",
                          http_client=urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout), retries=False))
            probe.bucket_exists("vidtune-health-probe")
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable now"
            return False

    def _split(self, uri: str, purpose: str = READ) -> tuple[str, str]:
        self.check(uri, f"{purpose} of", purpose)
        return split_uri(uri, self.config.allowed_prefix)

    def _local(self, uri: str, purpose: str = READ) -> bool:
        """True for a local path this storage may use; s3:// URIs are checked when split."""
        if is_s3(uri):
            return False
        self.check(uri, f"{purpose} of", purpose)
        return True

    def ensure_bucket(self, uri_or_bucket: str) -> None:
        bucket = self._split(uri_or_bucket, WRITE)[0] if is_s3(uri_or_bucket) else uri_or_bucket
        if self.policy is not None:
            self.policy.check_bucket(bucket)
        with self._lock:
            if bucket in self._buckets_seen:
                return
        if not self.client.bucket_exists(bucket):
            if self.policy is not None:
                self.policy.check_bucket_creation(bucket)
            from minio.error import S3Error

            try:
                self.client.make_bucket(bucket)
            except S3Error as e:  # a concurrent creator won the race
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
        with self._lock:
            self._buckets_seen.add(bucket)

    # -- queries
    def exists(self, uri: str) -> bool:
        if self._local(uri):
            return Path(uri).exists()
        from minio.error import S3Error

        bucket, key = self._split(uri)
        try:
            self.client.stat_object(bucket, key)
            return True
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"):
                return False
            raise

    def size(self, uri: str) -> int:
        if self._local(uri):
            return Path(uri).stat().st_size
        bucket, key = self._split(uri)
        return self._stat(bucket, key).size

    def _stat(self, bucket: str, key: str):
        from minio.error import S3Error

        try:
            return self.client.stat_object(bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "NotFound"):
                raise NotFound(f"s3://{bucket}/{key} does not exist") from None
            raise

    def list(self, prefix: str, recursive: bool = True, start_after: str = "") -> Iterator[str]:
        """Every file (object) below a directory or prefix, sorted, as paths or URIs; never anything outside
        the allowed prefix (VIDTUNE_S3_PREFIX). With `start_after` (a path or URI below `prefix`), only those
        that sort after it: the store skips the rest, so a listing of new keys costs what they cost."""
        if self._local(prefix, LIST):
            root = Path(prefix)
            if root.is_file():
                yield str(root)
                return
            if not root.exists():
                return
            it = root.rglob("*") if recursive else root.iterdir()
            for p in sorted(it):
                if p.is_file() and str(p) > start_after:
                    yield str(p)
            return
        self.check(prefix, "listing", LIST)
        bucket, key = split_uri(prefix)  # listing a prefix may name a folder-like key
        allowed = self.config.allowed_prefix or (self.policy.prefix if self.policy else "")
        if allowed and allowed.startswith(key):
            key = allowed  # a parent of the allowed prefix lists only what is inside it
        elif allowed and not key.startswith(allowed):
            raise InvalidArgument(f"listing {prefix!r} is outside the allowed prefix {allowed!r}")
        from minio.error import S3Error

        try:
            after = split_uri(start_after)[1] if start_after else None
            for obj in self.client.list_objects(bucket, prefix=key or None, recursive=recursive, start_after=after):
                if not obj.is_dir and obj.object_name.startswith(allowed):
                    yield f"{S3_SCHEME}{bucket}/{obj.object_name}"
        except S3Error as e:
            if e.code != "NoSuchBucket":
                raise

    # -- bytes
    def read_bytes(self, uri: str) -> bytes:
        if self._local(uri):
            p = Path(uri)
            if not p.exists():
                raise NotFound(f"{uri} does not exist")
            return p.read_bytes()
        return self.read_versioned(uri)[0]

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        if self._local(uri, WRITE):
            p = Path(uri)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, p)  # readers never see half a file
            return uri
        bucket, key = self._split(uri, WRITE)
        self.ensure_bucket(bucket)
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        return uri

    def write_text(self, uri: str, text: str, content_type: str = "text/plain; charset=utf-8") -> str:
        return self.write_bytes(uri, text.encode("utf-8"), content_type)

    def read_jsonl(self, uri: str) -> list[dict]:
        return [json.loads(line) for line in self.read_text(uri).splitlines() if line.strip()]

    def write_jsonl(self, uri: str, rows: Iterable[dict]) -> str:
        return self.write_text(uri, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                               "application/x-ndjson")

    # -- files
    def upload(self, local_path: str | Path, uri: str, content_type: str | None = None) -> str:
        if self._local(uri, WRITE):
            dst = Path(uri)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}.{threading.get_ident()}")
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, dst)
            return uri
        bucket, key = self._split(uri, WRITE)
        self.ensure_bucket(bucket)
        self.client.fput_object(bucket, key, str(local_path),
                                content_type=content_type or _guess_type(str(local_path)))
        return uri

    def download(self, uri: str, local_path: str | Path) -> Path:
        local_path = Path(local_path)
        if self._local(uri):
            local_path.parent.mkdir(parents=True, exist_ok=True)
            if not Path(uri).exists():
                raise NotFound(f"{uri} does not exist")
            shutil.copyfile(uri, local_path)
            return local_path
        bucket, key = self._split(uri)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        self._stat(bucket, key)  # a clear NotFound instead of an S3Error
        self.client.fget_object(bucket, key, str(local_path))
        return local_path

    @contextlib.contextmanager
    def local_copy(self, uri: str, scratch: str | Path | None = None) -> Iterator[Path]:
        """A local path holding the content of `uri`: the file itself when local, a temp copy otherwise."""
        if self._local(uri):
            if not Path(uri).exists():
                raise NotFound(f"{uri} does not exist")
            yield Path(uri)
            return
        with tempfile.TemporaryDirectory(dir=scratch, prefix="vt-in-") as d:
            yield self.download(uri, Path(d) / basename(uri))

    @contextlib.contextmanager
    def staged_output(self, uri: str, scratch: str | Path | None = None) -> Iterator[Path]:
        """A local path to write; on a clean exit it is published at `uri` in one step."""
        with tempfile.TemporaryDirectory(dir=scratch, prefix="vt-out-") as d:
            local = Path(d) / basename(uri)
            yield local
            self.upload(local, uri)

    # -- versioned reads and conditional writes: how job records get exactly one writer
    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        """The content of `uri` and its version (the S3 ETag; a content hash for a local file)."""
        if not is_s3(uri):
            data = self.read_bytes(uri)
            return data, _content_version(data)
        from minio.error import S3Error

        bucket, key = self._split(uri)
        try:
            resp = self.client.get_object(bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"{uri} does not exist") from None
            raise
        try:
            return resp.read(), resp.headers.get("etag", "").strip('"')
        finally:
            resp.close()
            resp.release_conn()

    def write_if(self, uri: str, data: bytes, version: str | None,
                 content_type: str = "application/json") -> str:
        """Write `data` only if `uri` is still at `version` (None: only if it does not exist yet), in one
        atomic step on the store (S3 If-Match / If-None-Match). Returns the new version; raises Conflict
        when another writer changed the object first."""
        if self._local(uri, WRITE):
            return _write_local_if(Path(uri), data, version)
        from minio.error import S3Error

        bucket, key = self._split(uri, WRITE)
        self.ensure_bucket(bucket)
        headers = {"Content-Type": content_type}
        headers.update({"If-None-Match": "*"} if version is None else {"If-Match": f'"{version}"'})
        try:
            return self.client.put_conditional(bucket, key, data, headers)
        except S3Error as e:
            if e.code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
            raise Conflict(f"{uri} was changed by another writer") from None
        except PreconditionAfterRetry:
            # A retried PUT whose first try did land (its answer was lost) answers 412 too: that write is ours.
            try:
                current, now = self.read_versioned(uri)
            except NotFound:
                current, now = None, ""
            if current == data:
                return now
            raise Conflict(f"{uri} was changed by another writer") from None

    def delete(self, uri: str) -> None:
        if self._local(uri, WRITE):
            with contextlib.suppress(FileNotFoundError):
                Path(uri).unlink()
            return
        bucket, key = self._split(uri, WRITE)
        self.client.remove_object(bucket, key)


def _http_pool():
    """minio's own pool settings, with room for a job's parallel transfers and a short connect timeout
    (a store that does not answer is retried by RetryingClient, with backoff, not waited on for minutes)."""
    import certifi
    import urllib3

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300), maxsize=32, cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=5, connect=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))


def _content_version(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


_local_cas_lock = threading.Lock()


def _write_local_if(path: Path, data: bytes, version: str | None) -> str:
    """Compare-and-swap of a local file: an exclusive lock file serialises writers across processes."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with _local_cas_lock, open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _content_version(path.read_bytes()) if path.exists() else None
        if current != version:
            raise Conflict(f"{path} was changed by another writer")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return _content_version(data)


def _transient(exc: BaseException) -> bool:
    """True for failures that mean "the store is not answering now" rather than "this request is wrong"."""
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        return exc.code in ("ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout")
    if isinstance(exc, InvalidResponseError):  # a proxy's HTML page: a 5xx while the store restarts
        return exc._code >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, ServerError))


# Answers that mean the settings are wrong (credentials, or an endpoint that is not an S3 server), not the
# request: one line naming the endpoint and what to check, instead of minio's traceback.
_REFUSED_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")


def _misconfigured(exc: BaseException, endpoint: str) -> FailedPrecondition | None:
    from minio.error import InvalidResponseError, S3Error

    keys = "VIDTUNE_S3_ACCESS_KEY / VIDTUNE_S3_SECRET_KEY (or VIDTUNE_S3_SECRET_DIR)"
    if isinstance(exc, S3Error) and exc.code in _REFUSED_CREDENTIALS:
        return FailedPrecondition(f"object store {endpoint} refused the credentials ({exc.code}): check {keys}")
    if isinstance(exc, S3Error) and exc.code == "AccessDenied":
        where = f" to s3://{exc.bucket_name}/{exc.object_name or ''}" if getattr(exc, "bucket_name", None) else ""
        return FailedPrecondition(f"object store {endpoint} denied access{where} (AccessDenied): check {keys} "
                                  f"and what the bucket's policy grants that user")
    if isinstance(exc, InvalidResponseError):
        return FailedPrecondition(f"{endpoint} did not answer as an S3 object store (HTTP {exc._code}, "
                                  f"{exc._content_type or 'no content type'}): check VIDTUNE_S3_ENDPOINT")
    return None


class PreconditionAfterRetry(Exception):
    """A conditional PUT answered 412 on a retry: the first try may have been the one that landed."""


class RetryingClient:
    """The minio client, with every call retried with backoff while the store is unreachable (up to
    `outage_seconds`), then UNAVAILABLE in one line. Listings are read whole inside the retry, so a
    listing never stops half-way."""

    def __init__(self, minio, endpoint: str, outage_seconds: float):
        self._minio, self._endpoint, self._outage = minio, endpoint, outage_seconds
        self._patience = threading.local()

    @contextlib.contextmanager
    def patience(self, seconds: float):
        """Wait at most `seconds` for an unreachable store in this thread (a caller waiting on an RPC)."""
        before = getattr(self._patience, "seconds", None)
        self._patience.seconds = seconds
        try:
            yield
        finally:
            self._patience.seconds = before

    def _call(self, fn, *args, **kwargs):
        patience = getattr(self._patience, "seconds", None)
        deadline = time.monotonic() + (self._outage if patience is None else patience)
        delay, warned = 0.5, False
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - sorted into transient or not just below
                if not _transient(e):
                    wrong = _misconfigured(e, self._endpoint)
                    if wrong is None:
                        raise
                    raise wrong from None
                if time.monotonic() + delay > deadline:
                    raise Unavailable(f"object store {self._endpoint} unreachable: {_short(e)}") from None
                if not warned:
                    log.warning("object store %s unreachable (%s); retrying for up to %.0f s",
                                self._endpoint, _short(e), deadline - time.monotonic())
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    def list_objects(self, *args, **kwargs):
        return iter(self._call(lambda: list(self._minio.list_objects(*args, **kwargs))))

    def put_conditional(self, bucket: str, key: str, data: bytes, headers: dict) -> str:
        # minio-py has no parameter for If-Match/If-None-Match (its metadata turns them into x-amz-meta-*),
        # so the PUT goes through its request layer with the headers as given.
        from minio.error import S3Error

        tries = 0

        def put():
            nonlocal tries
            tries += 1
            return self._minio._put_object(bucket, key, data, headers=headers)

        try:
            return self._call(put).etag
        except S3Error as e:
            if tries > 1 and e.code == "PreconditionFailed":
                raise PreconditionAfterRetry() from e
            raise

    def __getattr__(self, name):
        attr = getattr(self._minio, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: self._call(attr, *a, **kw)


def _short(exc: BaseException) -> str:
    """The first line of an exception, without urllib3's nested object reprs."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    reason = re.search(r"Caused by (\w+)\(.*?: (.*?)(?:'|\))", text)
    return f"{reason.group(1)}: {reason.group(2)}" if reason else text[:200]


_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".jpg": "image/jpeg", ".json": "application/json",
          ".jsonl": "application/x-ndjson", ".html": "text/html", ".md": "text/markdown",
          ".csv": "text/csv", ".parquet": "application/vnd.apache.parquet",
          ".safetensors": "application/octet-stream"}


def _guess_type(path: str) -> str:
    return _TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")
