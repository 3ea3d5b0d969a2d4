"""Transcode job kinds: map a submitted spec onto the batch core."""
from __future__ import annotations

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobContext
from vidtune.platform.storage import join

from .batch import require_output, run_batch
from .profiles import get_profile


def batch_spec_errors(spec: dict) -> list[str]:
    errors = []
    if not spec.get("inputs"):
        errors.append("inputs: give at least one input URI or prefix")
    if not spec.get("output"):
        errors.append("output: give an output URI or directory")
    return errors


def transcode_batch(ctx: JobContext) -> dict:
    spec = ctx.spec
    errors = batch_spec_errors(spec)
    if errors:
        raise InvalidArgument("; ".join(errors))
    profile = get_profile(spec.get("profile") or "wan-720p", spec.get("fps") or None,
                          spec.get("max_duration") or None)
    shard = (int(spec.get("shard_index") or 0), int(spec["shard_count"])) if spec.get("shard_count") else None
    report = spec.get("report") or join(spec["output"], "_reports", f"{ctx.job_id}.jsonl")
    ctx.set_result(report=report)
    summary = run_batch(ctx.storage, list(spec["inputs"]), spec["output"], profile, workers=int(spec.get("workers") or 2),
                        report_uri=report, scratch=ctx.scratch, progress=ctx.progress, cancelled=ctx.cancelled,
                        shard=shard, processes=ctx.processes)
    ctx.set_result(**summary.as_dict())
    require_output(summary)
    return summary.as_dict() | {"profile": profile.name, "output": spec["output"]}


HANDLERS = {"transcode.batch": transcode_batch}
