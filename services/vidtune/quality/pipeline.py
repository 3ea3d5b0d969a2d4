"""The quality stage as steps over manifest versions, and `run_quality`, which runs them all.

Each step reads one manifest version and writes a new one (lineage recorded by ManifestStore), so the CLI,
a job of the quality service and the demo all call the same functions, and a step re-run with the same
inputs finds its output already stored.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import pyarrow as pa

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.report import Report, new_figure
from vidtune.platform.shards import share
from vidtune.platform.storage import Storage, join

from . import dataset
from .features import FEATURE_COLUMNS, with_features
from .ingest import ingest, report_scores
from .manifest import ManifestStore, Version, content_hash
from .probe import ProbeSettings, ProbeStats, probe_manifest
from .rules import FilterResult, apply_rules, load_rules, parse_rules
from .stats import CONTENT_SAMPLE, write_stats

Progress = Callable[[int, int, str], None]


def _noop(done: int, total: int, message: str = "") -> None:
    return None


def step_ingest(store: ManifestStore, source: str, root: str | None = None, mapping: str | None = None,
                fmt: str = "auto", progress: Progress = _noop, transcoded: str | None = None) -> Version:
    res = ingest(source, root=root, mapping=mapping, fmt=fmt, storage=store.storage, progress=progress,
                 transcoded=transcoded)
    root = res.root
    params = {"source": source, "root": root, "mapping": mapping, "format": fmt, "source_digest": res.source_digest,
              "transcoded": transcoded}
    table = with_features(res.table)
    return store.save(table, "ingest", None, params,
                      extra={"root": root, "ingest_errors": res.errors, "files": res.files})


def root_of(store: ManifestStore, version: str) -> str:
    """The dataset root media paths are relative to, carried from the ingest record down the lineage."""
    for rec in store.lineage(version):
        if rec.get("root"):
            return rec["root"]
    raise InvalidArgument(f"manifest version {version} has no dataset root in its lineage")


def transcode_scores(store: ManifestStore, version: str) -> dict[str, object] | None:
    """The scores of the transcode report `version` was ingested with (ingest.report_scores), if any."""
    report = next((rec["params"].get("transcoded") for rec in store.lineage(version)
                   if rec.get("step") == "ingest"), None)
    return report_scores(store.storage, report) if report else None


def step_probe(store: ManifestStore, version: str, settings: ProbeSettings = ProbeSettings(), workers: int = 2,
               cache_root: str | None = None, scratch: str | None = None, progress: Progress = _noop,
               cancelled: Callable[[], bool] | None = None) -> tuple[Version, ProbeStats]:
    """(probed version, what this run did: items probed, taken from the cache, undecodable). Clips of the
    transcode report given at ingest take their scores from it (see probe_manifest)."""
    table = store.load(version)
    root = root_of(store, version)
    cache_root = cache_root or probe_cache(store.root)
    probed, stats = probe_manifest(table, root, store.storage, cache_root, settings, workers, scratch,
                                   progress, cancelled, transcode_scores(store, version))
    # The version depends on what was found, not only on the settings: changed media give a new version.
    digest = content_hash(probed.column("sha256").to_pylist(), probed.column("probe_error").to_pylist())
    params = {"settings": asdict(settings), "results": digest}
    return store.save(probed, "probe", version, params, extra={"root": root, "probe": asdict(stats)}), stats


def probe_cache(store_root: str) -> str:
    """Where a manifest store's probe results are kept, one object per item (keyed by its content)."""
    return join(store_root, "probe-cache")


def probe_shard(source: str, out: str, index: int, count: int, root: str | None = None, mapping: str | None = None,
                fmt: str = "auto", transcoded: str | None = None, settings: ProbeSettings = ProbeSettings(),
                workers: int = 2, storage: Storage | None = None, scratch: str | None = None,
                progress: Progress = _noop, cancelled: Callable[[], bool] | None = None) -> ProbeStats:
    """One pod's share of the probe of `run_quality(source, out, ...)`: the rows that run ingests, every
    `count`-th from `index`, probed into that run's probe cache. The run then finds every item there (the
    merge), so its manifests are the ones an unsharded run writes; an item already cached (a retried pod)
    is not probed again. Nothing but cache entries is written: the manifest versions are the run's to write."""
    storage = storage or Storage()
    res = ingest(source, root=root, mapping=mapping, fmt=fmt, storage=storage, transcoded=transcoded)
    rows = share(range(res.table.num_rows), index, count)
    _, stats = probe_manifest(res.table.take(pa.array(rows, pa.int64())), res.root, storage,
                              probe_cache(join(out, "manifests")), settings, workers, scratch, progress, cancelled,
                              report_scores(storage, transcoded) if transcoded else None)
    return stats


def step_filter(store: ManifestStore, version: str, rules: str | None = None,
                overrides: dict | None = None, rules_text: str | None = None) -> tuple[Version, Version, dict]:
    """(clean version, rejected version, report). Reads stored scores only: never probes, so re-tuning
    thresholds on a probed manifest costs seconds (the score-only path)."""
    ruleset = parse_rules(rules_text, "rules_yaml") if rules_text else load_rules(rules, store.storage, overrides)
    table = store.load(version)
    if not all(c in table.column_names for c in FEATURE_COLUMNS):
        table = with_features(table)
    res: FilterResult = apply_rules(table, ruleset)
    params = ruleset.to_dict()
    root = root_of(store, version)
    clean = store.save(res.clean, "filter-clean", version, params, extra={"root": root})
    rejected = store.save(res.rejected, "filter-rejected", version, params, extra={"root": root})
    res.report.update(clean_version=clean.id, rejected_version=rejected.id, input_version=version)
    return clean, rejected, res.report


def step_split(store: ManifestStore, version: str, val_ratio: float = 0.1, seed: int = 0,
               stratify=dataset.STRATA) -> Version:
    table = dataset.split(store.load(version), val_ratio, seed, tuple(stratify))
    counts = {k: int(v) for k, v in zip(*np.unique(table.column("split").to_numpy(zero_copy_only=False).astype(str),
                                                    return_counts=True))} if table.num_rows else {}
    return store.save(table, "split", version, {"val_ratio": val_ratio, "seed": seed, "stratify": list(stratify)},
                      extra={"splits": counts})


def step_subset(store: ManifestStore, version: str, n: int, proportions: dict | str | None = None,
                seed: int = 0, column: str = "category") -> Version:
    table, info = dataset.subset(store.load(version), n, proportions, seed, column)
    table, weights = dataset.class_weights(table, column)
    return store.save(table, "subset", version, {"n": n, "proportions": proportions, "seed": seed,
                                                 "column": column}, extra={**info, "class_weights": weights})


def step_stats(store: ManifestStore, version: str, out: str, title: str = "Dataset statistics",
               content_sample: int = CONTENT_SAMPLE) -> dict[str, str]:
    return write_stats(store.load(version), out, store.storage, title=title, content_sample=content_sample)


def step_export(store: ManifestStore, version: str, out: str, max_tokens: int = 512, tokenizer: str | None = None,
                copy_media: bool = True, workers: int = 4, scratch: str | None = None,
                progress: Progress = _noop, cancelled: Callable[[], bool] | None = None) -> dict:
    """metadata.csv (train rows, or all rows when unsplit) + metadata_val.csv (val rows) + media below `out`."""
    table = store.load(version)
    root = root_of(store, version)
    counter = dataset.hf_token_counter(tokenizer) if tokenizer else None
    result: dict = {"output": out}
    if "split" in table.column_names:
        splits = table.column("split").to_numpy(zero_copy_only=False).astype(str)
        parts = {"metadata.csv": splits != "val", "metadata_val.csv": splits == "val"}
    else:
        parts = {"metadata.csv": np.ones(table.num_rows, bool)}
    for name, mask in parts.items():
        part = table.filter(pa.array(mask))
        res = dataset.export(part, root, out, store.storage, max_tokens, counter, copy_media, workers, scratch,
                             progress, cancelled, metadata_name=name)
        result[name] = res.as_dict()
    result["lineage"] = write_lineage(table, root, out, store.storage)
    return result


def write_lineage(table: pa.Table, root: str, out: str, storage: Storage) -> str:
    """`<out>/lineage.jsonl`: per exported row, the archive object, its transcoded clip and the exported file."""
    from .manifest import relative_media

    cols = {c: table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
            for c in ("id", "media", "source_media", "transcoded", "split")}
    rows = [{"id": cols["id"][i], "source": cols["source_media"][i], "transcoded": cols["transcoded"][i],
             "exported": join(out, relative_media(root, cols["media"][i])), "split": cols["split"][i]}
            for i in range(table.num_rows)]
    return storage.write_jsonl(join(out, "lineage.jsonl"), rows)


def filter_report(report: dict, out: str, storage: Storage, ingest_errors: dict | None = None) -> dict[str, str]:
    """Per-rule rejection counts as Markdown + HTML + JSON (`<out>/filter.*`)."""
    rep = Report("Quality filter")
    rep.paragraph(f"{report['rows_in']:,} rows in = {report['clean']:,} clean + {report['rejected']:,} rejected.")
    rows = [[r["name"], r["check"], r["rejected"], r["only_reason"], r["skipped"] or ""] for r in report["rules"]]
    rep.table(["rule", "keeps", "rejected", "only reason", "skipped"], rows)
    hit = {r["name"]: r["rejected"] for r in report["rules"] if r["rejected"]}
    if hit:
        fig, ax = new_figure(7, 3.2)
        ax.barh(list(hit), list(hit.values()), color="#b42318")
        ax.set_xlabel("rows rejected (a row may fail several rules)")
        rep.figure(fig, "Rejections per rule")
    if ingest_errors:
        rep.heading("Ingest errors")
        rep.table(["kind", "rows"], [[k, v] for k, v in ingest_errors.items()])
    return rep.write(out, storage, stem="filter", data=report)


def run_quality(source: str, out: str, rules: str | None = None, root: str | None = None, mapping: str | None = None,
                fmt: str = "auto", probe: bool = True, probe_settings: ProbeSettings = ProbeSettings(),
                workers: int = 2, val_ratio: float | None = 0.1, seed: int = 0, export: bool = True,
                export_dir: str | None = None, max_tokens: int = 512, tokenizer: str | None = None,
                rule_overrides: dict | None = None, content_sample: int = CONTENT_SAMPLE,
                storage: Storage | None = None, transcoded: str | None = None,
                scratch: str | None = None, progress: Progress = _noop,
                cancelled: Callable[[], bool] | None = None) -> dict:
    """Ingest -> (probe) -> filter -> (split) -> statistics -> (export), all below `out` (dir or s3 prefix).

    Writes `<out>/clean.parquet`, `<out>/rejected.parquet` (with a `reasons` column), `<out>/report.json`,
    `<out>/filter.{md,html,json}`, `<out>/stats.{md,html,json}` + figures, manifest versions with lineage in
    `<out>/manifests/`, and with `export` the training layout in `<out>/export/` (metadata.csv = train,
    metadata_val.csv = val). With `transcoded` (a transcode report) rows name their transcoded clips (see
    ingest.ingest). Returns the report dict (also in report.json).
    """
    storage = storage or Storage()
    store = ManifestStore(join(out, "manifests"), storage)
    timings: dict[str, float] = {}
    t = time.monotonic()
    progress(0, 0, "ingest")
    ing = step_ingest(store, source, root, mapping, fmt, progress, transcoded)
    timings["ingest"] = time.monotonic() - t
    current = ing.id
    probe_info = None
    if probe:
        t = time.monotonic()
        pv, pstats = step_probe(store, current, probe_settings, workers, scratch=scratch, progress=progress,
                                cancelled=cancelled)
        probe_info = asdict(pstats)
        current = pv.id
        timings["probe"] = time.monotonic() - t
    t = time.monotonic()
    progress(0, 0, "filter")
    clean, rejected, frep = step_filter(store, current, rules, rule_overrides)
    for version, name in ((clean, "clean.parquet"), (rejected, "rejected.parquet")):
        # The stored version already is that Parquet file: its bytes are copied, not decoded and re-encoded.
        storage.write_bytes(join(out, name), store.storage.read_bytes(version.uri), "application/vnd.apache.parquet")
    filter_uris = filter_report(frep, out, storage, ing.record.get("ingest_errors"))
    timings["filter"] = time.monotonic() - t
    final = clean.id
    if val_ratio is not None and clean.rows:
        final = step_split(store, clean.id, val_ratio, seed).id
    t = time.monotonic()
    progress(0, 0, "statistics")
    stats_uris = step_stats(store, final, out, content_sample=content_sample)
    timings["stats"] = time.monotonic() - t
    export_info = None
    if export and clean.rows:
        t = time.monotonic()
        export_info = step_export(store, final, export_dir or join(out, "export"), max_tokens, tokenizer,
                                  workers=workers, scratch=scratch, progress=progress, cancelled=cancelled)
        timings["export"] = time.monotonic() - t
    report = {
        "source": source, "rows_in": frep["rows_in"], "clean": frep["clean"], "rejected": frep["rejected"],
        "rules": frep["rules"], "ingest_errors": ing.record.get("ingest_errors", {}), "probe": probe_info,
        "versions": {"ingest": ing.id, "probed": current if probe else None, "clean": clean.id,
                     "rejected": rejected.id, "final": final},
        "lineage": [r["version"] for r in store.lineage(final)],
        "outputs": {"clean": join(out, "clean.parquet"), "rejected": join(out, "rejected.parquet"),
                    "filter_report": filter_uris, "stats": stats_uris, "manifests": store.root},
        "export": export_info, "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    storage.write_text(join(out, "report.json"), json.dumps(report, ensure_ascii=False, indent=2, default=str),
                       "application/json")
    return report
