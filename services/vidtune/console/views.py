"""What the pages show, read from stage outputs in the object store: pure functions over Storage, no web
framework. Parquet manifests are read a page at a time (only the columns a page needs), so a 200,000-row
rejected table costs one cached download and a few column reads, never all rows in HTML."""
from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vidtune.platform.errors import NotFound
from vidtune.platform.storage import Storage, is_s3, join

# Columns the quality page shows for a row (the manifest may hold many more: scores, hashes, extra).
ROW_COLUMNS = ("id", "media", "caption", "category", "media_type", "width", "height", "duration", "source",
               "reasons")


class LocalCopies:
    """Object-store files copied to a private temporary directory once per (uri, ETag), so Parquet can be
    read by row group and column without fetching the object again for each page."""

    def __init__(self, storage: Storage, max_files: int = 16):
        self.storage = storage
        self.dir = Path(tempfile.mkdtemp(prefix="vidtune-console-"))
        self.max_files = max_files
        self._files: OrderedDict[tuple[str, str], Path] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, uri: str) -> Path:
        if not is_s3(uri):
            if not Path(uri).exists():
                raise NotFound(f"{uri} does not exist")
            return Path(uri)
        bucket, key = self.storage._split(uri)
        tag = self.storage._stat(bucket, key).etag
        with self._lock:
            hit = self._files.get((uri, tag))
            if hit is not None:
                self._files.move_to_end((uri, tag))
                return hit
        local = self.dir / f"{len(os.listdir(self.dir))}-{abs(hash((uri, tag)))}{Path(key).suffix}"
        self.storage.download(uri, local)
        with self._lock:
            self._files[(uri, tag)] = local
            while len(self._files) > self.max_files:
                _, old = self._files.popitem(last=False)
                old.unlink(missing_ok=True)
        return local


def rule_of(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def rejected_page(path: Path, rule: str = "", text: str = "", offset: int = 0, limit: int = 50) -> dict:
    """One page of rejected rows matching a rule name and/or a reason substring, with counts per rule."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if "reasons" not in names:
        raise NotFound(f"{path.name} has no `reasons` column: not a rejected table")
    st = path.stat()
    flat, parents, rules, counts = _reason_index(str(path), st.st_mtime_ns, st.st_size)
    conditions = ([pc.equal(rules, rule)] if rule else []) + \
        ([pc.match_substring(flat, text, ignore_case=True)] if text else [])
    if conditions:
        mask = conditions[0] if len(conditions) == 1 else pc.and_(*conditions)
        rows = np.sort(pc.unique(pc.filter(parents, mask)).to_numpy())
    else:
        rows = None
    total = pf.metadata.num_rows if rows is None else int(rows.size)
    offset = max(0, min(offset, max(total - 1, 0)))
    page_rows = list(range(offset, min(offset + limit, total))) if rows is None else rows[offset:offset + limit].tolist()
    cols = [c for c in ROW_COLUMNS if c in names]
    if "lineage" in names:
        cols.append("lineage")
    items = _take_rows(pf, page_rows, cols)
    return {"total": total, "offset": offset, "limit": limit, "rows": items, "rule_counts": counts,
            "all_rows": pf.metadata.num_rows}


@functools.lru_cache(maxsize=8)
def _reason_index(path: str, mtime_ns: int, size: int):
    """Every reason of a rejected table flattened, its row, its rule name, and the count per rule; keyed by the
    file's mtime and size too, so an index never outlives its file."""
    reasons = pq.read_table(path, columns=["reasons"]).column("reasons").combine_chunks()
    flat = pc.list_flatten(reasons)
    parents = pc.list_parent_indices(reasons)
    rules = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(flat, ":", max_splits=1), 0))
    counts = {d["values"]: d["counts"] for d in pc.value_counts(rules).to_pylist()}
    return flat, parents, rules, counts


def _take_rows(pf: pq.ParquetFile, rows: list[int], columns: list[str]) -> list[dict]:
    """The given rows (global indices) reading only the row groups that hold them."""
    if not rows:
        return []
    starts, n = [], 0
    for i in range(pf.num_row_groups):
        starts.append(n)
        n += pf.metadata.row_group(i).num_rows
    out = []
    by_group: dict[int, list[int]] = {}
    for r in rows:
        g = max(i for i, s in enumerate(starts) if s <= r)
        by_group.setdefault(g, []).append(r - starts[g])
    for g in sorted(by_group):
        t = pf.read_row_group(g, columns=columns)
        out += t.take(pa.array(by_group[g], pa.int64())).to_pylist()
    return [_jsonable(r) for r in out]


def _jsonable(row: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def media_uri(media: str, root: str = "") -> str:
    """A manifest's media value as a URI: absolute as is, relative to the dataset root otherwise."""
    if not media or is_s3(media) or media.startswith("/") or not root:
        return media
    return join(root, media)


def quality_outputs(storage: Storage, out: str) -> dict:
    """A quality run's report (counts per rule, lineage of versions) and the URIs of its tables and stats."""
    report = json.loads(storage.read_text(join(out, "report.json")))
    return {"report": report, "rejected": join(out, "rejected.parquet"), "clean": join(out, "clean.parquet"),
            "stats": join(out, "stats.json")}


def dataset_charts(stats: dict) -> dict:
    """The statistics a quality run wrote (stats.json) as chart series: {title: [[label, value], ...]}."""
    o = stats.get("overall") or {}
    charts = {}
    for key, title in (("media_type", "Media types"), ("resolution", "Resolutions"),
                       ("duration_buckets", "Video durations"), ("category", "Categories")):
        if o.get(key):
            charts[title] = [[str(k), v] for k, v in o[key].items()]
    top = (stats.get("content_words") or {}).get("top") or []
    if top:
        charts["Top words (Korean content words)"] = [[w, c] for w, c in top[:20]]
    return charts


def dataset_facts(stats: dict) -> list[tuple[str, str]]:
    o = stats.get("overall") or {}
    facts = [("rows", f"{o.get('rows', 0):,}")]
    ci = o.get("class_imbalance") or {}
    if ci.get("classes"):
        facts.append(("categories", f"{ci['classes']} (Gini {ci.get('gini', 0):.3f}, largest/smallest "
                                    f"{(ci.get('max_min_ratio') or 0):.3g})"))
    for key, label in (("caption_chars", "caption length (chars)"), ("caption_words", "caption length (words)"),
                       ("duration", "video duration (s)")):
        d = o.get(key) or {}
        if d.get("count"):
            facts.append((label, f"median {d['median']:.3g}, p5 {d['p5']:.3g}, p95 {d['p95']:.3g}, "
                                 f"max {d['max']:.3g}"))
    for name, split in (stats.get("splits") or {}).items():
        facts.append((f"split {name}", f"{split.get('rows', 0):,} rows"))
    return facts


POINT_KEYS = ("step", "epoch", "loss", "lr", "step_time_s", "samples_per_s")
OPTIONAL_POINT_KEYS = ("val_loss", "generated")  # only on the steps that validated or generated samples


def training_metrics(storage: Storage, out: str, after: int = 0) -> list[dict]:
    """metrics.jsonl lines with step > `after` (step, epoch, loss, lr, step time, and where present the held-out
    loss and the samples generated at that step), [] before the first flush."""
    uri = join(out, "metrics.jsonl")
    try:
        text = storage.read_text(uri)
    except NotFound:
        return []
    points = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        if m.get("step", 0) > after:
            points.append({**{k: m.get(k) for k in POINT_KEYS}, **{k: m[k] for k in OPTIONAL_POINT_KEYS if k in m}})
    return points


def training_samples(points: list[dict]) -> list[dict]:
    """The samples generated during a run, newest step first: [{step, generated: [{prompt_id, prompt, video, sheet}]}]."""
    return [{"step": p["step"], "generated": p["generated"]} for p in reversed(points) if p.get("generated")]


def checkpoints(storage: Storage, out: str) -> list[dict]:
    files = [u for u in storage.list(join(out, "checkpoints") + "/") if u.endswith(".safetensors")]
    final = join(out, "lora.safetensors")
    if storage.exists(final):
        files.append(final)
    return [{"uri": u, "name": u.rsplit("/", 1)[-1], "bytes": storage.size(u)} for u in files]


def evaluation(storage: Storage, compare_output: str, scores: list[str]) -> dict:
    """A comparison report and its scored videos grouped per prompt, checkpoints in report order."""
    report = json.loads(storage.read_text(join(compare_output, "report.json")))
    records = []
    for s in scores:
        try:
            records += storage.read_jsonl(join(s, "scores.jsonl"))
        except NotFound:
            continue
    order = list(report.get("checkpoints", {}).keys())
    prompts: dict[str, dict] = {}
    for r in records:
        if not r.get("video"):
            continue
        p = prompts.setdefault(str(r.get("prompt_id")), {"prompt": r.get("prompt", ""), "category": r.get("category"),
                                                         "by_checkpoint": {}})
        p["by_checkpoint"].setdefault(r.get("checkpoint"), []).append(r)
    for p in prompts.values():
        for recs in p["by_checkpoint"].values():
            recs.sort(key=lambda r: r.get("seed", 0))
    overall = [d for d in report.get("deltas", []) if d.get("scope") == "overall"]
    return {"report": report, "order": order, "prompts": dict(sorted(prompts.items())), "overall": overall,
            "conclusion": conclusion(report, overall)}


def conclusion(report: dict, overall: list[dict]) -> str:
    """One line: the last checkpoint against the baseline, verdicts counted, grades named."""
    cks = report.get("checkpoints") or {}
    base = report.get("baseline", "base")
    others = [c for c in cks if c != base]
    if not others:
        return f"only {base} was scored: nothing to compare"
    last = others[-1]
    verdicts = [d["verdict"] for d in overall if d.get("a") == base and d.get("b") == last]
    count = {v: verdicts.count(v) for v in ("improved", "worse", "unchanged")}
    grade_b, grade_a = (cks.get(last) or {}).get("grade", "?"), (cks.get(base) or {}).get("grade", "?")
    return (f"{last} vs {base}: {count['improved']} metric(s) improved, {count['worse']} worse, "
            f"{count['unchanged']} without a clear change; grade {grade_a} -> {grade_b}")
