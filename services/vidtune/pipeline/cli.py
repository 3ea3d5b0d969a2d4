"""`vidtune pipeline init|run|status`: the stages from archive to verdict as one command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from vidtune.platform.client import CliProgress
from vidtune.platform.storage import Storage, absolute

from . import runner, stages


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="archive -> transcode -> quality -> export -> train -> generate -> score "
                                        "-> compare, each stage a job")
    s = p.add_subparsers(dest="action", required=True)

    init = s.add_parser("init", help="print a commented pipeline YAML with every stage's settings and defaults")
    init.add_argument("--labels", required=True, help="label JSON directory, CSV or JSONL (path or URI)")
    init.add_argument("--media-root", required=True, help="the folder label paths are relative to")
    init.add_argument("--work", required=True, help="directory or s3:// prefix every stage writes below")
    init.set_defaults(func=cmd_init)

    run = s.add_parser("run", help="run the stages in order; finished ones are skipped, unfinished ones resumed")
    run.add_argument("--config", required=True, help="pipeline YAML (from `vidtune pipeline init`)")
    run.add_argument("--until", choices=stages.UNTIL, help="stop after this stage")
    run.add_argument("--submit", action="store_true",
                     help="submit each stage to its service (the local stack or VIDTUNE_<SERVICE>_ENDPOINT) and "
                          "wait for it, instead of running it in this process")
    run.add_argument("--watch", action="store_true", help="with --submit: a progress bar per stage job")
    run.add_argument("--backend", choices=["kubernetes"], help="create each stage as a Kubernetes Job (in the "
                     "cluster of the current kubeconfig, settings from VIDTUNE_K8S_*), in order, and follow it; "
                     "every location in the file must be an s3:// URI the pods reach")
    run.add_argument("--dry-run", action="store_true", help="with --backend kubernetes: print every stage's "
                     "Job (an Indexed Job for a stage with shards > 1) with its spec as a comment, create nothing")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=cmd_run)

    status = s.add_parser("status", help="every stage's state, job, time and error")
    status.add_argument("--config", required=True)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)


def cmd_init(args) -> int:
    # Local paths are written absolute, so the file means the same from any directory and to any service.
    print(stages.render_yaml(absolute(args.labels), absolute(args.media_root), absolute(args.work)), end="")
    return 0


def _load(path: str) -> stages.Pipeline:
    return stages.parse(Storage().read_text(path), path)


def cmd_run(args) -> int:
    pipeline = _load(args.config)
    if "generate" in [s.name for s in stages.stages_until(args.until)]:
        stages.check_models(pipeline)
    storage = Storage()
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.dry_run and args.backend != "kubernetes":
        print("error: --dry-run prints Kubernetes Jobs; use it with --backend kubernetes", file=sys.stderr)
        return 2
    if args.backend == "kubernetes":
        from vidtune.platform.kube import ClusterSettings, manifest_yaml
        from vidtune.platform.storage import is_s3

        local = [f"{name} {value!r}" for name, value in stages.locations(pipeline) if not is_s3(value)]
        if local:
            print(f"error: pods on a cluster read only s3:// URIs; these are local: {', '.join(local)} (upload "
                  f"them with `vidtune store cp` and name their s3:// URIs in {args.config})", file=sys.stderr)
            return 2
        settings = ClusterSettings.from_env()
        if args.dry_run:
            print("# `pipeline run --backend kubernetes` creates these Jobs one after another, each once the one\n"
                  "# before it succeeded, and writes the spec each names just before creating it (applied all at\n"
                  "# once with kubectl they would start together, before their specs exist).")
            # Which stages are done is asked of the store once, briefly: rendering works without it.
            quick = Storage(dataclasses.replace(storage.config, outage_seconds=min(5.0, storage.config.outage_seconds)))
            for about, job in runner.render_jobs(pipeline, quick, args.until, settings):
                comment = "".join(f"# {line}\n" for line in about.splitlines())
                print(comment if job is None else "---\n" + comment + manifest_yaml(job), end="")
            return 0
        executor = runner.OnKubernetes(storage, pipeline, settings)
    elif args.submit:
        executor = runner.Submitted(show_progress=args.watch and not args.quiet)
    else:
        bars: list[CliProgress] = []

        def progress(name: str):
            bars.append(CliProgress(name, enabled=not args.quiet))
            return bars[-1]

        executor = runner.InProcess(storage, progress)
    try:
        results = runner.run(pipeline, executor, storage, args.until, say)
    except runner.StageFailed as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"state of every stage: vidtune pipeline status --config {args.config}", file=sys.stderr)
        return 1
    print(json.dumps({name: summary(name, r) for name, r in results.items()}, ensure_ascii=False, indent=2))
    if "compare" in results:
        print(verdict_lines(runner.verdicts(storage, pipeline)), file=sys.stderr)
    return 0


def verdict_lines(verdicts: list[dict]) -> str:
    return "\n".join(f"{v['checkpoint']}: grade {v['grade']}; "
                     f"{', '.join(f'{m} {w}' for m, w in v['verdicts'].items()) or 'the baseline'}"
                     for v in verdicts)


def summary(stage: str, result: dict) -> dict:
    """The counts and locations of a stage's result (its JSON can be long: per-epoch URIs, rules...)."""
    return {k: v for k, v in result.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}


def cmd_status(args) -> int:
    rows = runner.status(_load(args.config), Storage())
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(f"{'stage':<10} {'state':<12} {'seconds':>8}  {'job':<28} output / error")
    for r in rows:
        detail = r["error"] or r["output"]
        print(f"{r['stage']:<10} {r['state']:<12} {r['seconds']:>8.1f}  {r['job_id'] or '-':<28} {detail}")
    return 0
