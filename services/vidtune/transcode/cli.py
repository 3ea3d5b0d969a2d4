"""`vidtune transcode run|submit|shard`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from vidtune.platform.client import CliProgress, add_client_args, submit_and_follow

from .profiles import PROFILES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcode", help="archive media -> model-ready clips on a fixed canvas")
    s = p.add_subparsers(dest="action", required=True)

    def common(q: argparse.ArgumentParser, many: bool = True) -> None:
        q.add_argument("--input", "--manifest", dest="input", action="append", required=True,
                       help="file, directory, s3:// URI or prefix, or a .txt manifest (repeatable)")
        q.add_argument("--output", required=True, help="output directory or s3:// prefix")
        q.add_argument("--profile", default="wan-720p", choices=sorted(PROFILES))
        q.add_argument("--fps", type=float, default=0.0, help="output frame rate (0: the profile's)")
        q.add_argument("--max-duration", type=float, default=0.0, help="seconds to keep (0: the profile's)")
        q.add_argument("--workers", type=int, default=2, help="inputs transcoded at once")
        q.add_argument("--report", help="JSONL report path/URI (default: <output>/_reports/...)")

    run = s.add_parser("run", help="transcode in this process")
    common(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--strict", action="store_true", help="exit with 3 when any input was rejected")
    run.set_defaults(func=cmd_run)

    submit = s.add_parser("submit", help="transcode as a job of the transcode service")
    common(submit)
    add_client_args(submit)
    submit.set_defaults(func=cmd_submit)

    shard = s.add_parser("shard", help="one pod's share of an Indexed Job (JOB_COMPLETION_INDEX)")
    common(shard)
    shard.add_argument("--shards", type=int, required=True)
    shard.add_argument("--index", type=int, default=None, help="default: $JOB_COMPLETION_INDEX")
    shard.set_defaults(func=cmd_run)


def _spec(args) -> dict:
    spec = {"inputs": args.input, "output": args.output, "profile": args.profile, "fps": args.fps,
            "max_duration": args.max_duration, "workers": args.workers, "report": args.report or ""}
    if getattr(args, "shards", None):
        index = args.index if args.index is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
        spec.update(shard_index=index, shard_count=args.shards)
    return spec


def cmd_run(args) -> int:
    from vidtune.platform.kinds import run_job

    from .tasks import KINDS

    with CliProgress("transcode", "file", enabled=not getattr(args, "quiet", False)) as bar:
        result = run_job(KINDS[0], _spec(args), bar)
    print(f"{result['ok']} ok ({result['skipped']} already done), {result['failed']} failed of {result['total']}; "
          f"report: {result['report']}", file=sys.stderr)
    for r in result["rejected"]:
        print(f"  rejected {r['input']}: {r['reason']}", file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k != "rejected"}, ensure_ascii=False))
    return 3 if result["failed"] and getattr(args, "strict", False) else 0


def cmd_submit(args) -> int:
    from vidtune.v1 import transcode_pb2, transcode_pb2_grpc

    from vidtune.platform.storage import absolute_locations

    from .tasks import KINDS

    # The service may run in another directory: local paths are sent absolute.
    request = transcode_pb2.TranscodeRequest(**absolute_locations(_spec(args), KINDS[0].locations))
    return submit_and_follow("transcode", args, lambda c: c.stub(transcode_pb2_grpc.TranscodeServiceStub)
                             .SubmitTranscode(request, metadata=c.metadata, timeout=c.timeout))
