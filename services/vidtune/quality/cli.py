"""`vidtune quality ingest|probe|filter|stats|split|subset|export|run|rules`.

Each step runs in this process by default; with `--submit` it becomes a job of the quality service
(same spec, same code path on the server).
"""
from __future__ import annotations

import argparse
import json
import sys

from vidtune.platform.client import CliProgress, add_client_args, submit_and_follow


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help="archive listing -> clean, balanced, training-ready dataset")
    s = p.add_subparsers(dest="action", required=True)

    def job_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--submit", action="store_true", help="run as a job of the quality service")
        add_client_args(q)
        q.add_argument("--quiet", action="store_true", help="no progress bar")

    def versioned(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", required=True, help="manifest store directory or s3:// prefix")
        q.add_argument("--version", required=True, help="manifest version id (e.g. ingest-1a2b...)")

    q = s.add_parser("ingest", help="read a CSV/JSONL listing or a JSON label directory into a manifest")
    q.add_argument("--source", required=True, help="listing file, label directory, or s3:// URI/prefix")
    q.add_argument("--store", help="manifest store (default: <root>/manifests)")
    q.add_argument("--root", help="dataset root media paths are relative to (default: the source's folder)")
    q.add_argument("--mapping", help="YAML/JSON mapping file: manifest field -> source field")
    q.add_argument("--format", default="auto", choices=["auto", "csv", "jsonl", "json", "jsondir"])
    q.add_argument("--transcoded", help="a transcode report (JSONL): rows name their transcoded clips")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="ingest")

    q = s.add_parser("probe", help="probe media in-process (PyAV/OpenCV): facts, hashes, scores")
    versioned(q)
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--metadata-only", action="store_true", help="no per-frame scores")
    q.add_argument("--cache", help="probe cache (default: <store>/probe-cache)")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="probe")

    q = s.add_parser("filter", help="apply the YAML rules: clean + rejected versions and a report")
    versioned(q)
    q.add_argument("--rules", help="rules YAML (default: the built-in rules; see `vidtune quality rules`)")
    q.add_argument("--report", help="directory/prefix for filter.{md,html,json}")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="filter")

    q = s.add_parser("stats", help="statistics as Markdown, JSON and HTML with plots")
    versioned(q)
    q.add_argument("--output", required=True)
    q.add_argument("--content-sample", type=int, default=1000, help="captions analysed for content words")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="stats")

    q = s.add_parser("split", help="stratified, seeded train/val split")
    versioned(q)
    q.add_argument("--val-ratio", type=float, default=0.1)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--stratify", action="append", help="column to stratify by (repeatable; default: "
                                                       "category and media_type)")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="split")

    q = s.add_parser("subset", help="N samples with target class proportions or balanced, plus class weights")
    versioned(q)
    q.add_argument("--size", type=int, required=True)
    q.add_argument("--proportion", action="append", default=[], metavar="CLASS=SHARE",
                   help="target share of a class, e.g. nature=0.3 (repeatable)")
    q.add_argument("--balanced", action="store_true")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--column", default="category")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="subset")

    q = s.add_parser("export", help="DiffSynth layout: <output>/metadata.csv (video,prompt) + media")
    versioned(q)
    q.add_argument("--output", required=True)
    q.add_argument("--max-tokens", type=int, default=512, help="caption budget (whole sentences kept)")
    q.add_argument("--tokenizer", help="tokenizer directory for exact counts (default: an estimate)")
    q.add_argument("--manifest-only", action="store_true", help="write metadata.csv without copying media")
    q.add_argument("--workers", type=int, default=4)
    job_args(q)
    q.set_defaults(func=cmd_step, kind="export")

    q = s.add_parser("run", help="ingest + filter + stats in one go (optionally probe and export)")
    q.add_argument("--manifest", required=True, help="listing file or label directory (as ingest --source)")
    q.add_argument("--out", required=True, help="clean.parquet, rejected.parquet, report.json, stats go here")
    q.add_argument("--rules", help="rules YAML (default: the built-in rules; see `vidtune quality rules`)")
    q.add_argument("--root", help="dataset root media paths are relative to (default: the manifest's folder)")
    q.add_argument("--mapping", help="YAML/JSON mapping file: manifest field -> source field (docs/formats.md)")
    q.add_argument("--transcoded", help="a transcode report (JSONL): rows name their transcoded clips, a row "
                                        "whose source was not transcoded is rejected with the reason")
    q.add_argument("--probe", action="store_true", help="probe media (needed for file, duplicate and score rules)")
    q.add_argument("--export", action="store_true", help="also write <out>/export/ for training")
    q.add_argument("--val-ratio", type=float, default=0.1, help="share of clean rows held out for validation")
    q.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    q.add_argument("--max-tokens", type=int, default=512, help="export: caption budget (whole sentences kept)")
    q.add_argument("--workers", type=int, default=2, help="media probed (and exported) at once")
    job_args(q)
    q.set_defaults(func=cmd_step, kind="run")

    q = s.add_parser("rules", help="print the default rules YAML (a starting point for --rules)")
    q.set_defaults(func=lambda a: print(_default_rules()) or 0)


def _default_rules() -> str:
    from .rules import DEFAULT_RULES_YAML

    return DEFAULT_RULES_YAML


def spec_from_args(args) -> dict:
    """The job spec of a CLI invocation (field names as in quality.proto)."""
    a = vars(args)
    if args.kind == "ingest":
        return {k: a.get(k) or "" for k in ("source", "store", "root", "mapping", "format", "transcoded")}
    base = {"store": args.store, "version": args.version} if args.kind != "run" else {}
    if args.kind == "probe":
        return base | {"workers": args.workers, "metadata_only": args.metadata_only, "cache": args.cache or ""}
    if args.kind == "filter":
        return base | {"rules": args.rules or "", "report": args.report or ""}
    if args.kind == "stats":
        return base | {"output": args.output, "content_sample": args.content_sample}
    if args.kind == "split":
        return base | {"val_ratio": args.val_ratio, "seed": args.seed, "stratify": args.stratify or []}
    if args.kind == "subset":
        props = {}
        for item in args.proportion:
            name, _, share = item.partition("=")
            try:
                props[name] = float(share)
            except ValueError:
                raise SystemExit(f"--proportion {item!r}: expected CLASS=SHARE with a number") from None
        return base | {"size": args.size, "proportions": props, "balanced": args.balanced, "seed": args.seed,
                       "column": args.column}
    if args.kind == "export":
        return base | {"output": args.output, "max_tokens": args.max_tokens, "tokenizer": args.tokenizer or "",
                       "manifest_only": args.manifest_only, "workers": args.workers}
    return {"source": args.manifest, "output": args.out, "rules": args.rules or "", "root": args.root or "",
            "mapping": args.mapping or "", "transcoded": args.transcoded or "", "skip_probe": not args.probe, "skip_export": not args.export,
            "val_ratio": args.val_ratio, "seed": args.seed, "max_tokens": args.max_tokens, "workers": args.workers}


def cmd_step(args) -> int:
    from vidtune.platform.kinds import by_name
    from vidtune.platform.storage import join

    from .tasks import KINDS

    spec = spec_from_args(args)
    kind = by_name(KINDS)[f"quality.{args.kind}"]
    if args.submit:
        from vidtune.v1 import quality_pb2, quality_pb2_grpc

        from vidtune.platform.storage import absolute_locations

        # The request message is the input type of the kind's Submit RPC.
        method = quality_pb2.DESCRIPTOR.services_by_name["QualityService"].methods_by_name[kind.rpc]
        # The service may run in another directory: local paths are sent absolute.
        request = getattr(quality_pb2, method.input_type.name)(**absolute_locations(spec, kind.locations))
        return submit_and_follow("quality", args, lambda c: getattr(c.stub(quality_pb2_grpc.QualityServiceStub),
                                                                    kind.rpc)(request, metadata=c.metadata,
                                                                              timeout=c.timeout))
    from vidtune.platform.kinds import run_job

    # In-process: the same validation and handler a job runs, reporting to a progress bar.
    with CliProgress(f"quality {args.kind}", enabled=not args.quiet) as bar:
        result = run_job(kind, spec, bar)
    if args.kind == "run":
        print(f"{result['rows_in']} rows: {result['clean']} clean, {result['rejected']} rejected; "
              f"report: {join(spec['output'], 'report.json')}", file=sys.stderr)
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0
