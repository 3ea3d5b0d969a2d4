"""Prompt sets: what to generate and score (id, prompt, category, optional first frame for TI2V).

Accepted files (path or s3:// URI): JSONL (one object per line), a JSON list, YAML (a list, or a mapping
with a `prompts` list) or CSV with a header. Fields: `id`, `prompt`, `category` (default "general"),
`image` (optional first-frame image path/URI; relative paths are taken relative to the prompt file).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict, dataclass

import yaml

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.storage import Storage, is_s3, join

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
DEFAULT_CATEGORY = "general"


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    category: str = DEFAULT_CATEGORY
    image: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read_rows(text: str, uri: str, what: str = "prompt set", key: str = "prompts") -> list[dict]:
    """Rows of a .jsonl, .csv, .json or .yaml file (a list, or a mapping holding the list under `key`)."""
    low = uri.lower()
    try:
        if low.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if low.endswith(".json"):
            data = json.loads(text)
        elif low.endswith((".yaml", ".yml")):
            data = yaml.safe_load(text)
        elif low.endswith(".csv"):
            return list(csv.DictReader(io.StringIO(text)))
        else:
            raise InvalidArgument(f"{what} {uri}: unknown format (use .jsonl, .json, .yaml or .csv)")
    except (ValueError, yaml.YAMLError) as e:
        raise InvalidArgument(f"{what} {uri}: cannot parse ({e})") from None
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list):
        raise InvalidArgument(f"{what} {uri}: expected a list of rows")
    return data


def load_prompts(uri: str, storage: Storage | None = None) -> list[PromptItem]:
    """Parse and validate a prompt set; errors name the file, the row and the reason."""
    storage = storage or Storage()
    rows = read_rows(storage.read_text(uri), uri)
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    items, seen = [], set()
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InvalidArgument(f"prompt set {uri} row {n}: expected an object, got {type(row).__name__}")
        pid, prompt = str(row.get("id") or "").strip(), str(row.get("prompt") or "").strip()
        if not _ID_RE.fullmatch(pid):
            raise InvalidArgument(f"prompt set {uri} row {n}: id {pid!r} must be 1-100 of A-Z a-z 0-9 . _ - "
                                  "(it becomes part of object keys)")
        if pid in seen:
            raise InvalidArgument(f"prompt set {uri} row {n}: duplicate id {pid!r}")
        if not prompt:
            raise InvalidArgument(f"prompt set {uri} row {n} ({pid}): empty prompt")
        image = str(row.get("image") or "").strip() or None
        if image and not is_s3(image) and not image.startswith("/"):
            image = join(base, image)
        seen.add(pid)
        items.append(PromptItem(pid, prompt, str(row.get("category") or DEFAULT_CATEGORY).strip(), image))
    if not items:
        raise InvalidArgument(f"prompt set {uri} has no prompts")
    return items
