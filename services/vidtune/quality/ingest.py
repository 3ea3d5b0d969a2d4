"""Read an archive listing (JSON label directory, CSV or JSONL) into a manifest table.

Ingest never stops on a bad row: a row that cannot be read cleanly keeps whatever could be read plus an
`ingest_error` naming the reason, and the filter step rejects it with that reason. So every input row is
accounted for (rows in == clean + rejected).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pyarrow as pa
import yaml

from vidtune.platform.errors import InvalidArgument, NotFound
from vidtune.platform.storage import Storage, basename, is_s3, normalise

from .manifest import CORE_SCHEMA, resolve_media

# Upper bound on a stored caption: a caption larger than this is an input defect, not a description.
MAX_CAPTION_CHARS = 100_000
VIDEO_EXT = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mxf", ".wmv", ".flv"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

# Manifest field -> source field (dotted paths reach into nested objects). Several candidates: first found.
DEFAULT_MAPPING: dict[str, list[str]] = {
    "id": ["id", "clip_id", "video_id", "sample_id"],
    "media": ["file_path", "media", "video", "path", "media_path", "file"],
    "caption": ["caption", "prompt", "text", "description"],
    "category": ["category", "class", "label"],
    "media_type": ["media_type", "type"],
    "width": ["width", "resolution.width"],
    "height": ["height", "resolution.height"],
    "duration": ["duration", "duration_sec", "length"],
}
REQUIRED = ("media", "caption")
# A CSV field may be large (a caption pasted with its whole script): read it, and let the caption limit
# reject the row with its reason, instead of the csv module stopping the whole file at 128 KiB.
csv.field_size_limit(2**31 - 1)


@dataclass
class IngestResult:
    table: pa.Table
    source_digest: str           # hash of everything read: the same input gives the same manifest version
    root: str = ""               # the dataset root the media paths were checked against
    files: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def load_mapping(uri: str | None, storage: Storage) -> dict[str, list[str]]:
    """A mapping file (YAML or JSON: {manifest_field: source_field or [candidates]}) over the defaults."""
    mapping = {k: list(v) for k, v in DEFAULT_MAPPING.items()}
    if not uri:
        return mapping
    try:
        loaded = yaml.safe_load(storage.read_text(uri)) or {}
    except yaml.YAMLError as e:
        raise InvalidArgument(f"mapping file {uri}: not valid YAML/JSON: {e}") from None
    if not isinstance(loaded, dict):
        raise InvalidArgument(f"mapping file {uri}: expected a mapping of manifest field -> source field")
    for k, v in loaded.items():
        if k not in mapping:
            raise InvalidArgument(f"mapping file {uri}: unknown manifest field {k!r}; known: {sorted(mapping)}")
        mapping[k] = [v] if isinstance(v, str) else list(v)
    return mapping


def default_root(source: str) -> str:
    """The folder that holds `source` (a listing file or a label directory)."""
    if is_s3(source):
        parent = source.rstrip("/").rsplit("/", 1)[0]
        return parent if parent != "s3:/" else source.rstrip("/")
    return os.path.dirname(os.path.abspath(source.rstrip("/")))


def detect_format(source: str, storage: Storage) -> str:
    low = source.lower().rstrip("/")
    if low.endswith(".csv"):
        return "csv"
    if low.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if low.endswith(".json"):
        return "json"
    if source.endswith("/") or not os.path.splitext(low)[1] or (not is_s3(source) and os.path.isdir(source)):
        return "jsondir"
    raise InvalidArgument(f"cannot tell the format of {source!r}: use .csv, .jsonl, .json or a directory")


def ingest(source: str, root: str | None = None, mapping: str | None = None, fmt: str = "auto",
           storage: Storage | None = None, progress: Callable[[int, int, str], None] | None = None,
           workers: int = 8, transcoded: str | None = None) -> IngestResult:
    """Read `source` into a manifest table; media paths are checked against the dataset `root`.

    `root` defaults to the folder holding the listing file, or holding the label directory (archives keep
    `labels/` beside `media/`, and label paths name media from the archive root).

    `transcoded` is a transcode report (JSONL, one line per input: input, status, output, reason): each row
    then names its transcoded clip instead of the archive object (kept in `source_media`), and a row whose
    source was not transcoded is an ingest error with the reason. The result's root is then the folder
    holding the transcoded clips.
    """
    storage = storage or Storage()
    fmt = detect_format(source, storage) if fmt == "auto" else fmt
    root = root or default_root(source)
    fields = load_mapping(mapping, storage)
    digest = hashlib.sha256()
    raw: list[tuple[str, dict | None, str | None]] = []  # (source, record, error)
    n_files = 0
    if fmt == "jsondir":
        files = [u for u in storage.list(source.rstrip("/") + ("/" if is_s3(source) else ""))
                 if u.lower().endswith(".json")]
        if not files:
            raise NotFound(f"no .json label files below {source}")
        n_files = len(files)
        with ThreadPoolExecutor(max(1, workers if is_s3(source) else 1)) as pool:
            base = source.rstrip("/") + "/"
            for i, (uri, data) in enumerate(zip(files, pool.map(lambda u: _read(storage, u), files))):
                name = uri[len(base):] if uri.startswith(base) else basename(uri)  # path below the label dir
                digest.update(name.encode() + b"\0" + data)
                raw.extend(_parse_json_doc(data, name))
                if progress and (i % 1000 == 0 or i + 1 == len(files)):
                    progress(i + 1, len(files), "reading label files")
    else:
        data = storage.read_bytes(source)
        digest.update(data)
        n_files = 1
        name = basename(source)
        if fmt == "csv":
            check_csv_columns(data, fields, name)
        raw = list(_parse_csv(data, name) if fmt == "csv" else
                   _parse_jsonl(data, name) if fmt == "jsonl" else _parse_json_doc(data, name))
    digest.update(json.dumps(fields, sort_keys=True).encode())
    table = _build_table(raw, fields, root)
    if transcoded:
        lines = _report_lines(storage.read_bytes(transcoded), transcoded)
        # Only what the join reads: a report that differs in timings or in which items a resumed (or
        # sharded) transcode skipped names the same clips, so it gives the same manifest version.
        joined = [{k: ln.get(k) for k in REPORT_FIELDS} for ln in lines]
        digest.update(b"\0transcoded\0" + json.dumps(joined, sort_keys=True).encode())
        table, root = join_transcoded(table, root, lines, transcoded)
    errors: dict[str, int] = {}
    for e in table.column("ingest_error").to_pylist():
        if e:
            key = e.split(":", 1)[0]
            errors[key] = errors.get(key, 0) + 1
    return IngestResult(table, digest.hexdigest()[:16], root, n_files, errors)


def check_csv_columns(data: bytes, fields: dict[str, list[str]], name: str) -> None:
    """A CSV whose header has no column for a required field cannot give a single clean row: say so once,
    naming the field, what was looked for and how to map it, instead of rejecting every row."""
    first = data.decode("utf-8", errors="replace").lstrip("\ufeff").split("\n", 1)[0]
    header = next(csv.reader([first]), [])
    for key in REQUIRED:
        if not any(c.split(".")[0] in header for c in fields[key]):
            raise InvalidArgument(
                f"{name}: no {key} column (looked for {', '.join(fields[key])}; the header has "
                f"{', '.join(header) or 'nothing'}); name yours in a mapping file, e.g. `{key}: <column>`, "
                f"and pass it with --mapping")


def _report_lines(data: bytes, uri: str) -> list[dict]:
    lines = []
    for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"transcode report {uri}:{i}: not JSON: {e.msg}") from None
        if not isinstance(doc, dict) or not doc.get("input") or not doc.get("status"):
            raise InvalidArgument(f"transcode report {uri}:{i}: expected an object with input, status, output")
        problem = _report_line_problem(doc)
        if problem:
            raise InvalidArgument(f"transcode report {uri}:{i}: {problem}")
        lines.append(doc)
    return lines


def _report_line_problem(doc: dict) -> str | None:
    if not isinstance(doc["input"], str) or not isinstance(doc["status"], str):
        return "input and status must be strings"
    if doc["status"] == "ok" and (not isinstance(doc.get("output"), str) or not doc["output"]):
        return "an ok line needs its output clip as a string"
    for key in ("width", "height", "duration"):
        v = doc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1e9
                              or not math.isfinite(v)):
            return f"{key} is {str(v)[:40]}, not a finite size"
    return None


def report_scores(storage: Storage, report_uri: str) -> dict[str, object]:
    """The quality scores a transcode report carries, by the output clip they were computed on (in
    location_key spelling): only a transcoded clip's own line can give it scores."""
    lines = _report_lines(storage.read_bytes(report_uri), report_uri)
    claims: dict[str, list] = {}
    for ln in lines:
        if ln["status"] == "ok" and ln.get("scores") is not None:
            claims.setdefault(location_key(ln["output"]), []).append(ln["scores"])
    # A clip that two lines claim takes neither's scores: it is probed by decoding.
    return {clip: scores[0] for clip, scores in claims.items() if len(scores) == 1}


def location_key(location: str) -> str:
    """One spelling per file, so a label's media and a report's input compare equal."""
    return location if is_s3(location) else os.path.abspath(normalise(location))


def common_folder(locations: list[str]) -> str:
    """The deepest folder holding every location (paths or URIs of one bucket)."""
    parts = [loc.split("/")[:-1] for loc in locations]
    common = parts[0]
    for p in parts[1:]:
        n = 0
        while n < min(len(common), len(p)) and common[n] == p[n]:
            n += 1
        common = common[:n]
    return "/".join(common) or "/"


# The fields of a transcode report line that `join_transcoded` reads.
REPORT_FIELDS = ("input", "status", "output", "reason", "media_type", "width", "height", "duration")


def join_transcoded(table: pa.Table, root: str, lines: list[dict], report_uri: str) -> tuple[pa.Table, str]:
    """Point each row at its transcoded clip (see `ingest`); returns the table and the clips' root."""
    by_input: dict[str, dict] = {}
    for ln in lines:
        seen = by_input.setdefault(location_key(ln["input"]), ln)
        if seen is not ln and seen.get("output") != ln.get("output"):
            raise InvalidArgument(f"transcode report {report_uri}: two lines for {ln['input']} name different "
                                  f"clips ({seen.get('output')}, {ln.get('output')})")
    outputs = [ln["output"] for ln in lines if ln["status"] == "ok" and ln.get("output")]
    if not outputs:
        raise InvalidArgument(f"transcode report {report_uri}: no input was transcoded, nothing to join")
    clips_root = common_folder(outputs)
    rows = table.to_pylist()
    for row in rows:
        if not row["source_media"]:  # no media, or a path that escapes the root: already an ingest error
            continue
        source = row["source_media"]
        line = by_input.get(location_key(source))
        reason = None
        if line is None:
            reason = f"not transcoded: {source} is not in the transcode report {report_uri}"
        elif line["status"] != "ok":
            reason = f"transcode failed: {line.get('reason') or 'no reason recorded'}"
        if reason:
            row["ingest_error"] = "; ".join(filter(None, [row["ingest_error"], reason]))
            continue
        row["transcoded"] = line["output"]
        row["media"] = line["output"][len(clips_root.rstrip("/")) + 1:]
        row["media_type"] = line.get("media_type") or row["media_type"]
        for key in ("width", "height", "duration"):  # the clip's facts, not the archive object's
            if line.get(key):
                row[key] = float(line[key])
    return pa.Table.from_pylist(rows, schema=table.schema), clips_root


def _read(storage: Storage, uri: str) -> bytes:
    return storage.read_bytes(uri)


def _decode(data: bytes) -> tuple[str | None, str | None]:
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8: byte {e.start}: {e.reason}"


def _parse_json_doc(data: bytes, name: str) -> Iterable[tuple[str, dict | None, str | None]]:
    text, err = _decode(data)
    if err:
        return [(name, None, err)]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return [(name, None, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}")]
    if isinstance(doc, dict):
        return [(name, doc, None)]
    if isinstance(doc, list):
        return [(f"{name}#{i}", d, None) if isinstance(d, dict) else
                (f"{name}#{i}", None, f"malformed JSON: element {i} is {type(d).__name__}, not an object")
                for i, d in enumerate(doc)]
    return [(name, None, f"malformed JSON: top level is {type(doc).__name__}, not an object")]


def _parse_jsonl(data: bytes, name: str) -> Iterable[tuple[str, dict | None, str | None]]:
    for i, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        src = f"{name}:{i}"
        text, err = _decode(line)
        if err:
            yield src, None, err
            continue
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            yield src, None, f"malformed JSON: {e.msg} at column {e.colno}"
            continue
        if not isinstance(doc, dict):
            yield src, None, f"malformed JSON: line is {type(doc).__name__}, not an object"
            continue
        yield src, doc, None


def _parse_csv(data: bytes, name: str) -> Iterable[tuple[str, dict | None, str | None]]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row does not hide the rest.
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return
    for rec in reader:
        src = f"{name}:{reader.line_num}"
        if None in rec:  # more cells than headers
            extra = rec.pop(None)
            rec["_extra_cells"] = extra
        bad = [k for k, v in rec.items() if isinstance(v, str) and _has_surrogate(v)]
        if bad:
            yield src, None, f"invalid UTF-8: in column {bad[0]}"
            continue
        yield src, {k: v for k, v in rec.items() if v is not None}, None


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _lookup(doc: dict, path: str):
    cur = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None, False
        cur = cur[part]
    return cur, True


def _number(v) -> float | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a number") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError(f"{v!r} is not a finite number")
    return f


def media_type_of(path: str) -> str:
    ext = os.path.splitext(path.lower())[1]
    return "image" if ext in IMAGE_EXT else "video"


def _build_table(raw: list[tuple[str, dict | None, str | None]], fields: dict[str, list[str]],
                 root: str) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in CORE_SCHEMA}
    seen: dict[str, str] = {}
    for src, doc, err in raw:
        row = {"id": None, "media": None, "caption": None, "category": None, "media_type": None,
               "width": None, "height": None, "duration": None, "source": src, "ingest_error": err,
               "extra": None, "source_media": None, "transcoded": None}
        errors = [err] if err else []
        if doc is not None:
            used: set[str] = set()
            for key, candidates in fields.items():
                for cand in candidates:
                    v, found = _lookup(doc, cand)
                    if found:
                        used.add(cand.split(".")[0])
                        if v is not None:
                            row[key] = v
                            break
            for key in REQUIRED:
                if row[key] is None or row[key] == "":
                    errors.append(f"missing field: {key} (looked for {', '.join(fields[key])})")
            for key in ("width", "height", "duration"):
                try:
                    row[key] = _number(row[key])
                except ValueError as e:
                    errors.append(f"bad field: {key} {e}")
                    row[key] = None
            for key in ("id", "media", "category", "media_type"):
                if row[key] is not None and not isinstance(row[key], str):
                    row[key] = str(row[key]) if isinstance(row[key], (int, float)) else json.dumps(
                        row[key], ensure_ascii=False)
            cap = row["caption"]
            if cap is not None and not isinstance(cap, str):
                errors.append(f"bad field: caption is {type(cap).__name__}, not text")
                cap = row["caption"] = None
            if isinstance(cap, str):
                if "\x00" in cap:
                    errors.append("NUL byte: caption contains a NUL character")
                    row["caption"] = cap = cap.replace("\x00", "")
                if len(cap) > MAX_CAPTION_CHARS:
                    errors.append(f"caption too large: {len(cap):,} characters, over the ingest limit of "
                                  f"{MAX_CAPTION_CHARS:,}")
                    row["caption"] = cap[:MAX_CAPTION_CHARS]
            extra = {k: v for k, v in doc.items() if k not in used}
            row["extra"] = json.dumps(extra, ensure_ascii=False, default=str) if extra else None
            media = row["media"]
            if isinstance(media, str) and media:
                try:
                    row["source_media"] = resolve_media(root, media)
                except InvalidArgument as e:
                    errors.append(f"bad path: {e}")
                mt = (row["media_type"] or "").strip().lower()
                if mt in ("", "mp4", "movie", "clip"):
                    mt = media_type_of(media) if not mt else "video"
                elif mt in ("img", "photo", "picture", "jpg", "png"):
                    mt = "image"
                row["media_type"] = mt
                if mt not in ("video", "image"):
                    errors.append(f"bad field: media_type {mt!r} (expected video or image)")
        if row["id"] is None:
            row["id"] = row["media"] if isinstance(row["media"], str) and row["media"] else src
        if "\x00" in row["id"]:
            row["id"] = row["id"].replace("\x00", "")
            errors.append("NUL byte: id contains a NUL character")
        if row["id"] in seen:
            errors.append(f"duplicate id: {row['id']!r} already read from {seen[row['id']]}")
            row["id"] = f"{row['id']}@{src}"  # keep ids unique so the row can still be reported
        else:
            seen[row["id"]] = src
        row["ingest_error"] = "; ".join(errors) if errors else None
        for k in cols:
            cols[k].append(row[k])
    return pa.Table.from_pydict(cols, schema=CORE_SCHEMA)
