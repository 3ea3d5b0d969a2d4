"""Transcode job kinds: map a submitted spec onto the batch core."""
from __future__ import annotations

from vidtune.platform.jobs import JobContext
from vidtune.platform.kinds import JobKind, handlers
from vidtune.platform.storage import join

from .batch import require_output, run_batch
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
    shard = (int(spec.get("shard_index") or 0), int(spec["shard_count"])) if spec.get("shard_count") else None
    report = spec.get("report") or join(spec["output"], "_reports", f"{ctx.job_id}.jsonl")
    ctx.set_result(report=report)
    summary = run_batch(ctx.storage, list(spec["inputs"]), spec["output"], profile, workers=int(spec.get("workers") or 2),
                        report_uri=report, scratch=ctx.scratch, progress=ctx.progress, cancelled=ctx.cancelled,
                        shard=shard, processes=ctx.processes)
    ctx.set_result(**summary.as_dict())
    require_output(summary)
    rejected = [{"input": r.input, "reason": r.reason} for r in summary.results if r.status != "ok"]
    # The report holds every line; the result names the first rejections so a caller sees why at once.
    return summary.as_dict() | {"profile": profile.name, "output": spec["output"], "rejected": rejected[:50]}


KINDS = [
    JobKind("transcode.batch", transcode_batch, rpc="SubmitTranscode", required=("inputs", "output"),
            locations=("inputs", "output", "report"), check=batch_problems),
]
HANDLERS = handlers(KINDS)
