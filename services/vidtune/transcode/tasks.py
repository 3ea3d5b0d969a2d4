"""Transcode job kinds: map a submitted spec onto the batch core."""
from __future__ import annotations

from vidtune.platform.jobs import JobContext
from vidtune.platform.kinds import JobKind, handlers
from vidtune.platform.shards import shard_name, shard_of, shard_spec
from vidtune.platform.storage import join

from .batch import BatchSummary, merge_reports, require_output, run_batch
from .profiles import get_profile


def _profile(spec: dict):
    return get_profile(spec.get("profile") or "wan-720p", spec.get("fps") or None, spec.get("max_duration") or None)


def batch_problems(spec: dict) -> list[str]:
    try:
        _profile(spec)
    except ValueError as e:
        return [f"profile: {e}"]
    return []


def transcode_batch(ctx: JobContext) -> dict:
    spec = ctx.spec
    profile = _profile(spec)
    shard = shard_of(spec)
    report = spec.get("report") or join(spec["output"], "_reports", f"{ctx.job_id}.jsonl")
    ctx.set_result(report=report)
    summary = run_batch(ctx.storage, list(spec["inputs"]), spec["output"], profile, workers=int(spec.get("workers") or 2),
                        report_uri=report, scratch=ctx.scratch, progress=ctx.progress, cancelled=ctx.cancelled,
                        shard=shard, processes=ctx.processes)
    ctx.set_result(**summary.as_dict())
    require_output(summary)
    return batch_result(summary, spec)


def batch_result(summary: BatchSummary, spec: dict) -> dict:
    rejected = [{"input": r.input, "reason": r.reason} for r in summary.results if r.status != "ok"]
    # The report holds every line; the result names the first rejections so a caller sees why at once.
    return summary.as_dict() | {"profile": _profile(spec).name, "output": spec["output"], "rejected": rejected[:50]}


# -- fan-out: one Indexed Job pod per shard, each with its own report, merged into the batch's report

def shard_report(spec: dict, index: int, count: int) -> str:
    return join(spec["output"], "_shards", f"report-{shard_name(index, count)}.jsonl")


def batch_shard_spec(spec: dict, index: int, count: int) -> dict:
    return {**shard_spec(spec, index, count), "report": shard_report(spec, index, count)}


def merge_batch(storage, spec: dict, count: int) -> dict:
    """The result of the whole batch from its `count` shards: their reports merged into `spec["report"]`."""
    report = spec.get("report") or join(spec["output"], "_reports", "merged.jsonl")
    summary = merge_reports(storage, [shard_report(spec, i, count) for i in range(count)], report)
    require_output(summary)
    return batch_result(summary, spec)


KINDS = [
    JobKind("transcode.batch", transcode_batch, rpc="SubmitTranscode", required=("inputs", "output"),
            locations=("inputs", "output", "report"), check=batch_problems),
]
HANDLERS = handlers(KINDS)
