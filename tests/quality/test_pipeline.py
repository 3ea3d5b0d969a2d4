"""The whole stage: run_quality on real files (local and S3), the score-only re-filter, the CLI."""
from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from vidtune.quality import pipeline, probe
from vidtune.quality.manifest import ManifestStore

from quality_testlib import SMALL_MEDIA_OVERRIDES

EXPECTED_REJECTIONS = {  # id -> a rule that must be among its reasons
    "media/moving_copy.mp4": "exact_duplicate", "media/still.mp4": "still_clip", "media/black.mp4": "black_frames",
    "media/blurry.mp4": "blur", "media/truncated.mp4": "media_readable", "media/not_video.mp4": "media_readable",
    "media/missing.mp4": "media_readable", "../outside.mp4": "ingest_errors",
}


def test_run_quality_accounts_for_every_row_and_writes_every_output(archive, tmp_path):
    out = tmp_path / "out"
    report = pipeline.run_quality(str(archive / "list.csv"), str(out), rule_overrides=SMALL_MEDIA_OVERRIDES,
                                  content_sample=50)
    assert report["rows_in"] == 11 == report["clean"] + report["rejected"]
    clean = pq.read_table(out / "clean.parquet")
    rejected = pq.read_table(out / "rejected.parquet")
    assert clean.num_rows + rejected.num_rows == 11
    assert sorted(clean.column("id").to_pylist()) == ["media/mandel.mp4", "media/moving.mp4", "media/still.png"]
    reasons = dict(zip(rejected.column("id").to_pylist(), rejected.column("reasons").to_pylist()))
    for item, rule in EXPECTED_REJECTIONS.items():
        assert any(r.startswith(f"{rule}: ") for r in reasons[item]), (item, reasons[item])
    assert json.loads((out / "report.json").read_text())["clean"] == 3
    for name in ("stats.md", "stats.html", "stats.json", "filter.md", "filter.html", "filter.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "export/metadata.csv", encoding="utf-8")))
    val = list(csv.DictReader(open(out / "export/metadata_val.csv", encoding="utf-8")))
    assert sorted(r["video"] for r in rows + val) == ["media/mandel.mp4", "media/moving.mp4", "media/still.png"]
    assert all((out / "export" / r["video"]).exists() for r in rows + val)
    store = ManifestStore(str(out / "manifests"))
    steps = [r["step"] for r in store.lineage(report["versions"]["final"])]
    assert steps == ["split", "filter-clean", "probe", "ingest"]
    # Running again repeats nothing: same versions, every probe from the cache.
    again = pipeline.run_quality(str(archive / "list.csv"), str(out), rule_overrides=SMALL_MEDIA_OVERRIDES,
                                 content_sample=50)
    assert again["versions"] == report["versions"] and again["probe"]["probed"] == 0
    assert again["probe"]["cached"] == report["probe"]["probed"]


def test_score_only_refilter_never_probes(archive, tmp_path, monkeypatch):
    store = ManifestStore(str(tmp_path / "m"))
    ing = pipeline.step_ingest(store, str(archive / "list.csv"))
    probed, _ = pipeline.step_probe(store, ing.id)
    clean1, _, _ = pipeline.step_filter(store, probed.id, overrides=SMALL_MEDIA_OVERRIDES)

    def no_probe(*a, **k):
        raise AssertionError("the score-only path must not probe")

    monkeypatch.setattr(probe, "probe_file", no_probe)
    rules = tmp_path / "strict.yaml"
    rules.write_text("rules:\n  - {name: sharp, type: range, field: blur, min: 2200}\n"
                     "  - {name: readable, type: probe_ok}\n")
    clean2, rejected2, rep = pipeline.step_filter(store, probed.id, str(rules))
    assert rep["rows_in"] == 11 == clean2.rows + rejected2.rows
    rows = store.load(probed.id).to_pylist()
    expect = sorted(r["id"] for r in rows if r["ingest_error"] is None and r["decodable"] and r["blur"] >= 2200)
    got = sorted(store.load(clean2.id).column("id").to_pylist())
    assert got == expect and "media/mandel.mp4" not in got and "media/moving_copy.mp4" in got
    assert sorted(store.load(clean1.id).column("id").to_pylist()) != got
    assert store.get(clean2.id).record["parent"] == probed.id


def test_run_quality_on_the_object_store(storage, bucket, archive):
    root = f"{bucket}/archive"
    for p in sorted((archive / "media").iterdir()):
        storage.upload(p, f"{root}/media/{p.name}")
    storage.upload(archive / "list.csv", f"{root}/list.csv")
    out = f"{bucket}/quality"
    report = pipeline.run_quality(f"{root}/list.csv", out, rule_overrides=SMALL_MEDIA_OVERRIDES, storage=storage,
                                  content_sample=20)
    assert report["rows_in"] == 11 and report["clean"] == 3
    assert storage.exists(f"{out}/clean.parquet") and storage.exists(f"{out}/rejected.parquet")
    meta = storage.read_text(f"{out}/export/metadata.csv")
    first = meta.splitlines()[1].split(",")[0]
    assert storage.exists(f"{out}/export/{first}")
    assert json.loads(storage.read_text(f"{out}/report.json"))["versions"]["final"] == report["versions"]["final"]


def test_cli_run_writes_clean_rejected_and_report(archive, tmp_path, capsys):
    from vidtune.cli import main

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: caption_length, type: range, field: caption_chars, min: 50, max: 1500}\n")
    code = main(["quality", "run", "--manifest", str(archive / "list.csv"), "--out", str(tmp_path / "o"),
                 "--rules", str(rules), "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows_in"] == 11 and result["rejected"] == 1  # only the path escaping the root
    rejected = pq.read_table(tmp_path / "o/rejected.parquet")
    assert "bad path" in rejected.column("reasons").to_pylist()[0][0]
    assert (tmp_path / "o/report.json").exists() and (tmp_path / "o/clean.parquet").exists()
    assert main(["quality", "rules"]) == 0 and "caption_length" in capsys.readouterr().out


def test_cli_steps_chain_through_versions(archive, tmp_path, capsys):
    from vidtune.cli import main

    store = str(tmp_path / "store")

    def run(*args) -> dict:
        assert main(["quality", *args, "--quiet"]) == 0
        return json.loads(capsys.readouterr().out)

    ing = run("ingest", "--source", str(archive / "list.csv"), "--store", store)
    pr = run("probe", "--store", store, "--version", ing["version"], "--metadata-only")
    flt = run("filter", "--store", store, "--version", pr["version"])
    assert flt["rows_in"] == 11 == flt["clean"] + flt["rejected"]
    sp = run("split", "--store", store, "--version", ing["version"], "--val-ratio", "0.2")
    assert sum(sp["splits"].values()) == 11
    sub = run("subset", "--store", store, "--version", sp["version"], "--size", "4", "--balanced")
    assert sub["rows"] == 4 and sub["class_weights"]
    st = run("stats", "--store", store, "--version", sub["version"], "--output", str(tmp_path / "st"),
             "--content-sample", "10")
    assert st["html"].endswith("stats.html")
    ex = run("export", "--store", store, "--version", sub["version"], "--output", str(tmp_path / "ex"),
             "--manifest-only")
    assert ex["rows"] == 4 and ex["copied"] == 0 and (tmp_path / "ex/metadata.csv").exists()


@pytest.mark.parametrize("bad", ["", "nothing-here/"])
def test_missing_source_is_a_clear_error(tmp_path, bad, capsys):
    from vidtune.cli import main

    assert main(["quality", "ingest", "--source", str(tmp_path / bad) + ("/" if bad else ""), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
