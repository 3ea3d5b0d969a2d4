"""A batch transcode over many inputs: one result per input, resumable, one bad file never fails the batch.

Each output key is derived from the input URI and the profile settings, and written in one step after
the encode succeeds, so a batch killed at any point and run again skips what is done, redoes what was
in flight, and never leaves a half-written output or a duplicate.
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from vidtune.platform.access import refusal
from vidtune.platform.errors import FailedPrecondition, InvalidArgument, JobCancelled, NotFound
from vidtune.platform.jobs import ChildProcesses
from vidtune.platform.media import media_type
from vidtune.platform.shards import interleave, share
from vidtune.platform.storage import Storage, basename, is_s3, join, normalise

from .encode import encode_image, encode_video
from .profiles import Profile

META_DIR = "_meta"  # per-output facts, so a resumed batch reports skipped items without re-probing


@dataclass
class Item:
    input: str   # local path or s3:// URI
    rel: str     # path below the input root it was listed from; the output keeps this layout
    refused: str = ""  # why the access policy refuses this input (recorded, never read)

    @property
    def kind(self) -> str:
        return media_type(self.input)


@dataclass
class ItemResult:
    input: str
    status: str                     # ok | failed
    output: str = ""
    reason: str = ""
    media_type: str = ""
    width: int = 0
    height: int = 0
    duration: float = 0.0
    fps: float = 0.0
    encoder: str = ""
    skipped: bool = False           # output existed already (a resumed or repeated batch)
    seconds: float = 0.0
    scores: dict | None = None      # a video's quality scores from the encode (quality.probe.FrameScorer)

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass
class BatchSummary:
    total: int
    ok: int
    failed: int
    skipped: int
    report: str
    results: list[ItemResult] = field(repr=False, default_factory=list)

    def as_dict(self) -> dict:
        return {"total": self.total, "ok": self.ok, "failed": self.failed, "skipped": self.skipped,
                "report": self.report}


def list_inputs(storage: Storage, inputs: Iterable[str], source: str = "inputs") -> list[Item]:
    """Expand directories/prefixes into their media files; single files are taken as given.

    A text file ending in `.txt` is a manifest: one path or URI per line ('#' comments allowed). An entry
    the access policy refuses (a local path on a service, a bucket or prefix it may not use) becomes a
    refused item with the reason, and is neither read, listed nor probed.
    """
    items: list[Item] = []
    seen: set[str] = set()
    for entry in inputs:
        entry = str(entry).strip()
        if not entry:
            continue
        entry = normalise(entry)  # "./archive" is listed as "archive/...": cut prefixes from the same spelling
        reason = refusal(storage.policy, entry, source)
        if reason:
            if entry not in seen:
                seen.add(entry)
                items.append(Item(entry, basename(entry), refused=reason))
            continue
        if entry.endswith(".txt") and not entry.endswith("/"):
            lines = storage.read_text(entry).splitlines()
            items += [i for i in list_inputs(storage, [ln for ln in lines if not ln.lstrip().startswith("#")],
                                             f"manifest {entry}")
                      if i.input not in seen and not seen.add(i.input)]
            continue
        if _is_dir(storage, entry):
            root = entry.rstrip("/") + "/"
            for uri in storage.list(root):
                name = basename(uri)
                if name.startswith(".") or media_type(uri) == "unknown" or uri in seen:
                    continue
                seen.add(uri)
                items.append(Item(uri, uri[len(root):]))
        else:
            if entry in seen:
                continue
            seen.add(entry)
            items.append(Item(entry, basename(entry)))
    return items


def _is_dir(storage: Storage, entry: str) -> bool:
    if is_s3(entry):
        return entry.endswith("/") or not storage.exists(entry)
    return Path(entry).is_dir()


def output_uri(item: Item, output_root: str, profile: Profile) -> str:
    """`<root>/<rel dir>/<stem>.<profile>-<hash>.<ext>`: readable, and unique per input and settings."""
    digest = hashlib.sha256(f"{item.input}\n{profile.settings_hash()}".encode()).hexdigest()[:10]
    rel = PurePosixPath(item.rel)
    ext = "png" if item.kind == "image" else "mp4"
    name = f"{rel.stem}.{profile.name}-{digest}.{ext}"
    return join(output_root, str(rel.parent) if str(rel.parent) != "." else "", name)


def meta_uri(output_root: str, out: str) -> str:
    return join(output_root, META_DIR, out[len(output_root.rstrip("/")) + 1:] + ".json")


def transcode_item(storage: Storage, item: Item, output_root: str, profile: Profile,
                   scratch: Path | None = None, processes: ChildProcesses | None = None) -> ItemResult:
    """Transcode one input; never raises for a bad input, returns a failed result with the reason."""
    t0 = time.monotonic()
    out = output_uri(item, output_root, profile)
    res = ItemResult(input=item.input, status="ok", output=out, media_type=item.kind)
    try:
        if item.refused:
            raise InvalidArgument(item.refused)
        meta = meta_uri(output_root, out)
        if storage.exists(out) and storage.exists(meta):
            res = ItemResult(**json.loads(storage.read_text(meta)))
            res.skipped = True
            return res
        if item.kind == "unknown":
            raise InvalidArgument(f"{item.input}: not a video or image file name")
        with storage.local_copy(item.input, scratch) as src, storage.staged_output(out, scratch) as dst:
            encode = encode_image if item.kind == "image" else encode_video
            r = encode(Path(src), Path(dst), profile, item.input, processes)
        res.width, res.height, res.duration, res.fps, res.encoder = r.width, r.height, r.duration, r.fps, r.encoder
        res.scores = r.scores
        res.seconds = round(time.monotonic() - t0, 3)
        storage.write_text(meta, res.as_json(), "application/json")
        return res
    except (InvalidArgument, NotFound) as e:
        return ItemResult(input=item.input, status="failed", reason=str(e), media_type=item.kind,
                          seconds=round(time.monotonic() - t0, 3))
    except Exception as e:  # noqa: BLE001 - anything else about this one file is still this file's failure
        return ItemResult(input=item.input, status="failed", reason=f"{item.input}: {type(e).__name__}: {e}",
                          media_type=item.kind, seconds=round(time.monotonic() - t0, 3))


def run_batch(storage: Storage, inputs: Iterable[str], output_root: str, profile: Profile, workers: int = 2,
              report_uri: str | None = None, scratch: Path | None = None,
              progress: Callable[[int, int, str], None] = lambda d, t, m: None,
              cancelled: Callable[[], bool] = lambda: False, shard: tuple[int, int] | None = None,
              processes: ChildProcesses | None = None) -> BatchSummary:
    """Transcode every input on a pool of `workers`, writing a JSONL report (one line per input, in input order).

    When `cancelled()` turns true no new input is started; the ones in flight finish (a drain) unless
    their encoders were killed (a cancel kills the job's `processes`), then JobCancelled is raised.

    `shard=(index, count)` keeps every count-th input from index on: one pod's share of an Indexed Job.
    """
    items = list_inputs(storage, inputs)
    if not items:
        raise InvalidArgument(f"no media files found in {list(inputs)!r}")
    if shard is not None:  # a shard may hold no input (more pods than inputs): its report is empty
        items = shard_items(items, *shard)
    report_uri = report_uri or join(output_root, "_reports", f"transcode-{profile.name}.jsonl")
    results: dict[int, ItemResult] = {}
    total = len(items)
    progress(0, total, f"{total} inputs")
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="transcode") as pool:
        pending: dict[Future, int] = {}
        next_i = 0
        while next_i < total or pending:
            # Keep at most `workers` items in flight, so a cancel leaves little to undo.
            while next_i < total and len(pending) < max(1, workers):
                pending[pool.submit(transcode_item, storage, items[next_i], output_root, profile, scratch,
                                    processes)] = next_i
                next_i += 1
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                results[i] = r = fut.result()
                word = "skipped" if r.skipped else r.status
                progress(len(results), total, f"{word}: {basename(r.input)}")
            if cancelled():
                # Collect the items in flight (a drain lets them finish; a cancel has killed their
                # encoders), so the progress handed back counts every item whose output exists.
                for fut in as_completed(list(pending)):
                    i = pending.pop(fut)
                    results[i] = r = fut.result()
                    progress(len(results), total, f"{'skipped' if r.skipped else r.status}: {basename(r.input)}")
                raise JobCancelled(f"cancelled after {len(results)} of {total} inputs")
    return write_report(storage, [results[i] for i in range(total)], report_uri)


def write_report(storage: Storage, ordered: list[ItemResult], report_uri: str) -> BatchSummary:
    storage.write_text(report_uri, "".join(r.as_json() + "\n" for r in ordered), "application/x-ndjson")
    ok = sum(r.status == "ok" for r in ordered)
    return BatchSummary(total=len(ordered), ok=ok, failed=len(ordered) - ok, skipped=sum(r.skipped for r in ordered),
                        report=report_uri, results=ordered)


def merge_reports(storage: Storage, shard_reports: list[str], report_uri: str) -> BatchSummary:
    """The report of the whole batch from its shards' reports (shard i's is the i-th), lines in input order:
    what one unsharded run writes."""
    parts = [[ItemResult(**row) for row in storage.read_jsonl(uri)] for uri in shard_reports]
    return write_report(storage, interleave(parts), report_uri)


def require_output(summary: BatchSummary) -> None:
    """A batch that transcoded nothing failed, whatever the reason of each input."""
    if summary.total and not summary.ok:
        first = next((r.reason for r in summary.results if r.reason), "")
        raise FailedPrecondition(f"every input failed ({summary.failed} of {summary.total}); first: {first}; "
                                 f"report: {summary.report}")


def shard_items(items: list[Item], index: int, count: int) -> list[Item]:
    """Every `count`-th input starting at `index`: the share of one pod of an Indexed Job."""
    return share(items, index, count)
