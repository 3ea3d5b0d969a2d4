"""Versioned Parquet manifests with lineage.

A dataset is a table with one row per sample. Every step (ingest, probe, filter, split, subset) writes a
new version `<store>/<version>.parquet` plus `<store>/<version>.json` recording its parent, the step, the
parameters and the row counts; nothing is ever overwritten. The version id is a hash of parent + step +
parameters, so re-running a step with the same inputs finds its output already there (idempotent jobs).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from vidtune.platform.errors import InvalidArgument, NotFound
from vidtune.platform.storage import Storage, is_s3, join

# Columns every manifest has; ingest fills them, later steps add score and split columns.
CORE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("media", pa.string()),          # path relative to the dataset root, or an s3:// URI
    ("caption", pa.large_string()),
    ("category", pa.string()),
    ("media_type", pa.string()),     # video | image
    ("width", pa.float64()),
    ("height", pa.float64()),
    ("duration", pa.float64()),
    ("source", pa.string()),         # where the row came from: file[:line]
    ("ingest_error", pa.string()),   # null when the row was read cleanly
    ("extra", pa.large_string()),    # unknown fields as JSON, kept for the next consumer
    # lineage: the archive object a row's label names, and the transcoded clip that replaced it (when a
    # transcode report was joined at ingest; `media` then names the transcoded clip)
    ("source_media", pa.string()),
    ("transcoded", pa.string()),
])


def content_hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]


@dataclass
class Version:
    """One stored manifest version: where its table lives and how it came about."""

    id: str
    uri: str
    record: dict

    @property
    def rows(self) -> int:
        return int(self.record.get("rows", 0))


class ManifestStore:
    """Manifest versions below one directory or object prefix (`<dataset root>/manifests` by default)."""

    def __init__(self, root: str, storage: Storage | None = None):
        self.root = str(root).rstrip("/")
        self.storage = storage or Storage()

    def table_uri(self, version: str) -> str:
        return join(self.root, f"{version}.parquet")

    def record_uri(self, version: str) -> str:
        return join(self.root, f"{version}.json")

    @staticmethod
    def version_id(step: str, parent: str | None, params: dict) -> str:
        return f"{step}-{content_hash(step, parent, params)}"

    def exists(self, version: str) -> bool:
        return self.storage.exists(self.record_uri(version))

    def get(self, version: str) -> Version:
        try:
            rec = json.loads(self.storage.read_text(self.record_uri(version)))
        except NotFound:
            raise NotFound(f"manifest version {version!r} not found in {self.root}") from None
        return Version(version, self.table_uri(version), rec)

    def list(self) -> list[Version]:
        out = []
        for uri in self.storage.list(self.root + "/", recursive=False):
            if uri.endswith(".json"):
                vid = uri.rsplit("/", 1)[-1][:-5]
                out.append(self.get(vid))
        return sorted(out, key=lambda v: v.record.get("created", ""))

    def lineage(self, version: str) -> list[dict]:
        """The chain of records from `version` back to its ingest."""
        chain, cur = [], version
        while cur:
            rec = self.get(cur).record
            chain.append(rec)
            cur = rec.get("parent")
        return chain

    def load(self, version: str) -> pa.Table:
        return read_table(self.table_uri(version), self.storage)

    def save(self, table: pa.Table, step: str, parent: str | None, params: dict,
             version: str | None = None, extra: dict | None = None) -> Version:
        """Write a new version (or return the existing one with the same id: steps are idempotent)."""
        vid = version or self.version_id(step, parent, params)
        if self.exists(vid):
            return self.get(vid)
        uri = write_table(table, self.table_uri(vid), self.storage)
        rec = {"version": vid, "parent": parent, "step": step, "params": params, "rows": table.num_rows,
               "uri": uri, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               **(extra or {})}
        # The record is written last: a version "exists" only once its table is complete.
        self.storage.write_text(self.record_uri(vid), json.dumps(rec, ensure_ascii=False, indent=2),
                                "application/json")
        return Version(vid, uri, rec)


def write_table(table: pa.Table, uri: str, storage: Storage | None = None) -> str:
    storage = storage or Storage()
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue(), "application/vnd.apache.parquet")
    return uri


def read_table(uri: str, storage: Storage | None = None) -> pa.Table:
    """A manifest version, its text columns made valid UTF-8 (see with_valid_text)."""
    storage = storage or Storage()
    return with_valid_text(pq.read_table(io.BytesIO(storage.read_bytes(uri))))


def with_valid_text(table: pa.Table) -> pa.Table:
    """Parquet stores strings as bytes it never checks, so an edited file can hold invalid UTF-8, which every
    later step would fail on, for every row. The bad bytes of such a row become U+FFFD and its ingest_error
    names the columns, so the ingest_errors rule rejects that row alone and says why."""
    bad_rows: dict[int, list[str]] = {}
    columns = list(table.columns)
    for k, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        try:
            columns[k].validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        raw = columns[k].cast(pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary())
        values = []
        for i, b in enumerate(raw.to_pylist()):
            if b is None:
                values.append(None)
                continue
            try:
                values.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(b.decode("utf-8", "replace"))
                bad_rows.setdefault(i, []).append(field.name)
        columns[k] = pa.chunked_array([pa.array(values, field.type)])
    if not bad_rows:
        return table
    if "ingest_error" in table.column_names:
        k = table.column_names.index("ingest_error")
        errors = columns[k].to_pylist()
        for i, names in bad_rows.items():
            note = f"not valid UTF-8 in {', '.join(names)} (bytes replaced)"
            errors[i] = f"{errors[i]}; {note}" if errors[i] else note
        columns[k] = pa.chunked_array([pa.array(errors, table.schema.field(k).type)])
    return pa.Table.from_arrays(columns, schema=table.schema)


def resolve_media(root: str, media: str) -> str:
    """The full path/URI of a manifest media entry; raises InvalidArgument when it escapes the root.

    Relative entries are joined to the dataset root; s3:// entries are used as they are; absolute local
    paths are accepted only when they lie below a local root.
    """
    if not media:
        raise InvalidArgument("empty media path")
    if "\x00" in media:
        raise InvalidArgument("media path contains a NUL byte")
    if is_s3(media):
        parts = media[5:].split("/")
        if any(p in (".", "..") for p in parts[1:]):
            raise InvalidArgument(f"media URI {media!r} has a '.' or '..' segment")
        return media
    p = PurePosixPath(media.replace("\\", "/"))
    if p.is_absolute():
        if is_s3(root):
            raise InvalidArgument(f"absolute media path {media!r} with an object-store root {root!r}")
        rel = _relative_to(p, PurePosixPath(root))
        if rel is None:
            raise InvalidArgument(f"media path {media!r} is outside the dataset root {root!r}")
        return str(p)
    if any(part == ".." for part in p.parts):
        raise InvalidArgument(f"media path {media!r} escapes the dataset root with '..'")
    return join(root, str(p))


def relative_media(root: str, media: str) -> str:
    """Media entry as a path relative to the root (used by export), or the URI's key when it is elsewhere."""
    if is_s3(media):
        base = str(root).rstrip("/") + "/"
        return media[len(base):] if media.startswith(base) else media[5:].split("/", 1)[1]
    p = PurePosixPath(media)
    if p.is_absolute():
        rel = _relative_to(p, PurePosixPath(root))
        return str(rel) if rel is not None else p.name
    return str(p)


def _relative_to(p: PurePosixPath, root: PurePosixPath) -> PurePosixPath | None:
    import os.path

    norm = PurePosixPath(os.path.normpath(str(p)))
    try:
        return norm.relative_to(PurePosixPath(os.path.normpath(str(root))))
    except ValueError:
        return None
