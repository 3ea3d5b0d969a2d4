"""Quality job kinds: map a submitted spec onto the pipeline steps.

Every step is idempotent: manifest versions are content-addressed (an existing version is returned, not
rewritten), probe results are cached per item and exported media already in place are skipped, so a
killed and resumed job neither loses nor repeats work.
"""
from __future__ import annotations

from vidtune.platform.errors import FailedPrecondition
from vidtune.platform.jobs import JobContext
from vidtune.platform.kinds import JobKind, handlers
from vidtune.platform.shards import shard_of
from vidtune.platform.storage import join

from . import pipeline
from .ingest import default_root
from .manifest import ManifestStore
from .probe import ProbeSettings
from .stats import CONTENT_SAMPLE

DEFAULT_WORKERS = 2


def _split_problems(spec: dict) -> list[str]:
    return [] if 0 <= float(spec.get("val_ratio") or 0) < 1 else ["val_ratio: must be in [0, 1)"]


def _subset_problems(spec: dict) -> list[str]:
    problems = [] if int(spec.get("size") or 0) >= 0 else ["size: must be positive"]
    if sum((spec.get("proportions") or {}).values()) > 1.0 + 1e-6:
        problems.append("proportions: must sum to at most 1")
    return problems


def _filter_problems(spec: dict) -> list[str]:
    if spec.get("rules_yaml"):
        from .rules import parse_rules

        parse_rules(spec["rules_yaml"], "rules_yaml")  # a bad rules text fails the call, not the job
    return []


def _store(ctx: JobContext) -> ManifestStore:
    return ManifestStore(ctx.spec["store"], ctx.storage)


def quality_ingest(ctx: JobContext) -> dict:
    spec = ctx.spec
    root = spec.get("root") or None
    store = ManifestStore(spec.get("store") or join(root or default_root(spec["source"]), "manifests"), ctx.storage)
    v = pipeline.step_ingest(store, spec["source"], root, spec.get("mapping") or None, spec.get("format") or "auto",
                             progress=ctx.progress, transcoded=spec.get("transcoded") or None)
    return {"store": store.root, "version": v.id, "manifest": v.uri, "rows": v.rows,
            "ingest_errors": v.record.get("ingest_errors", {})}


def quality_probe(ctx: JobContext) -> dict:
    spec = ctx.spec
    settings = ProbeSettings(scores=not spec.get("metadata_only"))
    v, stats = pipeline.step_probe(_store(ctx), spec["version"], settings,
                                   int(spec.get("workers") or DEFAULT_WORKERS), spec.get("cache") or None,
                                   str(ctx.scratch), ctx.progress, ctx.cancelled)
    return {"version": v.id, "manifest": v.uri, "rows": v.rows, "probed": stats.probed, "cached": stats.cached,
            "undecodable": stats.failed}


def quality_probe_shard(ctx: JobContext) -> dict:
    """A quality.run's probe, one shard of it (a pod of an Indexed Job); the run itself merges the shards."""
    spec = ctx.spec
    index, count = shard_of(spec) or (0, 1)
    stats = pipeline.probe_shard(spec["source"], spec["output"], index, count, root=spec.get("root") or None,
                                 mapping=spec.get("mapping") or None, transcoded=spec.get("transcoded") or None,
                                 workers=int(spec.get("workers") or DEFAULT_WORKERS), storage=ctx.storage,
                                 scratch=str(ctx.scratch), progress=ctx.progress, cancelled=ctx.cancelled)
    return {"shard_index": index, "shard_count": count, "probed": stats.probed, "cached": stats.cached,
            "undecodable": stats.failed}


def quality_filter(ctx: JobContext) -> dict:
    spec = ctx.spec
    store = _store(ctx)
    clean, rejected, report = pipeline.step_filter(store, spec["version"], spec.get("rules") or None,
                                                   rules_text=spec.get("rules_yaml") or None)
    out = spec.get("report") or join(store.root, "reports", clean.id)
    uris = pipeline.filter_report(report, out, ctx.storage)
    return {"clean_version": clean.id, "rejected_version": rejected.id, "rows_in": report["rows_in"],
            "clean": report["clean"], "rejected": report["rejected"], "report": uris["json"],
            "report_html": uris["html"]}


def quality_stats(ctx: JobContext) -> dict:
    spec = ctx.spec
    uris = pipeline.step_stats(_store(ctx), spec["version"], spec["output"],
                               content_sample=int(spec.get("content_sample") or CONTENT_SAMPLE))
    return {"markdown": uris["markdown"], "html": uris["html"], "json": uris["json"]}


def quality_split(ctx: JobContext) -> dict:
    spec = ctx.spec
    v = pipeline.step_split(_store(ctx), spec["version"], float(spec.get("val_ratio") or 0.1),
                            int(spec.get("seed") or 0), tuple(spec.get("stratify") or ("category", "media_type")))
    return {"version": v.id, "manifest": v.uri, "rows": v.rows, "splits": v.record.get("splits", {})}


def quality_subset(ctx: JobContext) -> dict:
    spec = ctx.spec
    proportions = "balanced" if spec.get("balanced") else (dict(spec.get("proportions") or {}) or None)
    v = pipeline.step_subset(_store(ctx), spec["version"], int(spec["size"]), proportions,
                             int(spec.get("seed") or 0), spec.get("column") or "category")
    return {"version": v.id, "manifest": v.uri, "rows": v.rows, "targets": v.record.get("targets", {}),
            "class_weights": v.record.get("class_weights", {})}


def quality_export(ctx: JobContext) -> dict:
    spec = ctx.spec
    res = pipeline.step_export(_store(ctx), spec["version"], spec["output"], int(spec.get("max_tokens") or 512),
                               spec.get("tokenizer") or None, not spec.get("manifest_only"),
                               int(spec.get("workers") or 4), str(ctx.scratch), ctx.progress, ctx.cancelled)
    parts = [v for v in res.values() if isinstance(v, dict)]  # metadata.csv and metadata_val.csv
    return {"output": spec["output"], "metadata": res["metadata.csv"]["metadata"], "lineage": res["lineage"],
            "rows": sum(v["rows"] for v in parts), "copied": sum(v["copied"] for v in parts)}


def no_clean_rows(report: dict, out: str) -> str:
    rules = [f"{r['name']} ({r['rejected']})" for r in report["rules"] if r["rejected"]]
    return (f"every row was rejected ({report['rejected']} of {report['rows_in']}); rules that rejected rows: "
            f"{', '.join(rules) or 'none'}; see {join(out, 'filter.html')}")


def quality_run(ctx: JobContext) -> dict:
    spec = ctx.spec
    out = spec["output"]
    ctx.set_result(report=join(out, "report.json"))
    report = pipeline.run_quality(
        spec["source"], out, rules=spec.get("rules") or None, root=spec.get("root") or None,
        mapping=spec.get("mapping") or None, probe=not spec.get("skip_probe"),
        workers=int(spec.get("workers") or DEFAULT_WORKERS), val_ratio=float(spec.get("val_ratio") or 0.1),
        seed=int(spec.get("seed") or 0), export=not spec.get("skip_export"),
        max_tokens=int(spec.get("max_tokens") or 512), storage=ctx.storage, scratch=str(ctx.scratch),
        progress=ctx.progress, cancelled=ctx.cancelled, transcoded=spec.get("transcoded") or None)
    ctx.set_result(rows_in=report["rows_in"], clean=report["clean"], rejected=report["rejected"])
    if not report["clean"]:  # reports are written, but a run that kept nothing did not succeed
        raise FailedPrecondition(no_clean_rows(report, out))
    return {"rows_in": report["rows_in"], "clean": report["clean"], "rejected": report["rejected"],
            "clean_manifest": report["outputs"]["clean"], "rejected_manifest": report["outputs"]["rejected"],
            "stats_html": report["outputs"]["stats"]["html"], "manifests": report["outputs"]["manifests"],
            "final_version": report["versions"]["final"],
            "export": (report["export"] or {}).get("output", "")}


# Spec fields that name storage locations: a remote caller may only point them at the object store.
_LOCATIONS = ("source", "store", "root", "mapping", "rules", "output", "report", "cache", "tokenizer", "transcoded")


def _kind(verb: str, handler, rpc: str, required: tuple[str, ...], check=None) -> JobKind:
    return JobKind(f"quality.{verb}", handler, rpc=rpc, required=required, locations=_LOCATIONS, check=check)


KINDS = [
    _kind("ingest", quality_ingest, "SubmitIngest", ("source",)),
    _kind("probe", quality_probe, "SubmitProbe", ("store", "version")),
    _kind("filter", quality_filter, "SubmitFilter", ("store", "version"), _filter_problems),
    _kind("stats", quality_stats, "SubmitStats", ("store", "version", "output")),
    _kind("split", quality_split, "SubmitSplit", ("store", "version"), _split_problems),
    _kind("subset", quality_subset, "SubmitSubset", ("store", "version", "size"), _subset_problems),
    _kind("export", quality_export, "SubmitExport", ("store", "version", "output")),
    _kind("run", quality_run, "SubmitRun", ("source", "output")),
    # No Submit RPC: the pods of a fanned-out pipeline quality stage run it (vidtune.pipeline.stages).
    _kind("probe-shard", quality_probe_shard, "", ("source", "output", "shard_count")),
]
HANDLERS = handlers(KINDS)
