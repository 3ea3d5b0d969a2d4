"""`vidtune pipeline` as a user runs it: init, run with --until, re-runs, a failed stage, status."""
import csv
import json
from pathlib import Path

import av
import cv2
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_testlib import ITEMS, RULES, make_tiny_archive

from vidtune.cli import main
from vidtune.pipeline import stages


def vidtune(*args, capsys=None) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr() if capsys else None
    return code, out.out if out else "", out.err if out else ""


@pytest.fixture
def archive(tmp_path_factory) -> Path:
    return make_tiny_archive(tmp_path_factory.mktemp("archive"))


def write_config(tmp_path: Path, archive: Path, capsys, **stage_settings) -> Path:
    """`pipeline init`, then the edits a user makes: small-media rules, the 480p canvas."""
    code, out, _ = vidtune("pipeline", "init", "--labels", str(archive / "labels"), "--media-root", str(archive),
                           "--work", str(tmp_path / "work"), capsys=capsys)
    assert code == 0
    doc = yaml.safe_load(out)
    assert set(doc["stages"]) == set(stages.STAGE_NAMES)
    assert doc["stages"]["transcode"]["profile"] == "wan-720p" and "# output canvas" in out  # commented defaults
    (tmp_path / "rules.yaml").write_text(RULES)
    doc["stages"]["quality"]["rules"] = str(tmp_path / "rules.yaml")
    doc["stages"]["transcode"]["profile"] = "wan-480p"
    for stage, values in stage_settings.items():
        doc["stages"][stage].update(values)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def stage_state(work: Path, stage: str) -> dict | None:
    p = work / stage / "_stage.json"
    return json.loads(p.read_text()) if p.exists() else None


def video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.codec_context.width, s.codec_context.height


def test_until_export_holds_only_transcoded_clips_at_the_profile_size(tmp_path, archive, capsys):
    config = write_config(tmp_path, archive, capsys)
    work = tmp_path / "work"

    # --until transcode: that stage only
    code, _, err = vidtune("pipeline", "run", "--config", str(config), "--until", "transcode", capsys=capsys)
    assert code == 0, err
    assert stage_state(work, "transcode")["state"] == "SUCCEEDED" and stage_state(work, "quality") is None
    transcoded_at = stage_state(work, "transcode")["finished"]

    code, out, err = vidtune("pipeline", "run", "--config", str(config), "--until", "export", capsys=capsys)
    assert code == 0, err
    assert "transcode: done already" in err                      # finished stage skipped, not redone
    assert stage_state(work, "transcode")["finished"] == transcoded_at
    assert stage_state(work, "train") is None                     # --until stops there

    # The export names transcoded clips only, each on the 832x480 canvas, whatever its source's shape.
    rows = list(csv.DictReader((work / "export" / "metadata.csv").open(encoding="utf-8")))
    val = work / "export" / "metadata_val.csv"
    if val.exists():
        rows += list(csv.DictReader(val.open(encoding="utf-8")))
    assert sorted(r["video"].split("/")[-1].split(".")[0] for r in rows) == sorted([i[0] for i in ITEMS] + ["photo"])
    for r in rows:
        assert ".wan-480p-" in r["video"], r
        clip = work / "export" / r["video"]
        size = video_size(clip) if clip.suffix == ".mp4" else cv2.imread(str(clip)).shape[1::-1]
        assert tuple(size) == (832, 480), (r["video"], size)
    archive_names = {p.name for p in (archive / "media").rglob("*") if p.is_file()}
    assert not archive_names & {p.name for p in (work / "export").rglob("*") if p.is_file()}  # no original

    # Lineage: every exported row names its archive object and its transcoded clip.
    lineage = [json.loads(line) for line in (work / "export" / "lineage.jsonl").read_text().splitlines()]
    assert len(lineage) == len(rows)
    for row in lineage:
        assert row["source"].startswith(str(archive / "media")) and Path(row["source"]).exists()
        assert row["transcoded"].startswith(str(work / "transcode")) and Path(row["transcoded"]).exists()
        assert Path(row["exported"]).exists()
    # The damaged file is a rejected row that keeps the transcode's reason.
    rejected = pq.read_table(work / "quality" / "rejected.parquet").to_pylist()
    assert [r["id"] for r in rejected] == ["damaged"]
    assert any("transcode failed" in reason for reason in rejected[0]["reasons"]), rejected[0]["reasons"]

    # A re-run with nothing changed does nothing; a changed setting redoes that stage and the ones after it.
    exported_at = stage_state(work, "export")["finished"]
    code, _, err = vidtune("pipeline", "run", "--config", str(config), "--until", "export", capsys=capsys)
    assert code == 0 and err.count("done already") == 3 and stage_state(work, "export")["finished"] == exported_at
    doc = yaml.safe_load(config.read_text())
    doc["stages"]["quality"]["val_ratio"] = 0.5
    config.write_text(yaml.safe_dump(doc, allow_unicode=True))
    code, _, _ = vidtune("pipeline", "run", "--config", str(config), "--until", "transcode", capsys=capsys)
    code, out, _ = vidtune("pipeline", "status", "--config", str(config), capsys=capsys)
    assert code == 0
    states = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert states == {"transcode": "SUCCEEDED", "quality": "STALE", "export": "SUCCEEDED", "train": "NOT",
                      "generate": "NOT", "score": "NOT", "compare": "NOT"}, out
    code, _, err = vidtune("pipeline", "run", "--config", str(config), "--until", "export", capsys=capsys)
    assert code == 0 and "transcode: done already" in err and "quality: running" in err and "export: running" in err


def test_a_stage_that_keeps_nothing_fails_and_a_rerun_resumes_there(tmp_path, archive, capsys):
    config = write_config(tmp_path, archive, capsys)
    work = tmp_path / "work"
    (tmp_path / "rules.yaml").write_text(RULES + "  - {name: impossible, type: range, field: short_side, min: 10000}\n")
    code, _, err = vidtune("pipeline", "run", "--config", str(config), "--until", "export", capsys=capsys)
    assert code == 1
    assert "stage quality failed" in err and "every row was rejected" in err and "impossible" in err
    assert stage_state(work, "quality")["state"] == "FAILED" and stage_state(work, "export") is None
    code, out, _ = vidtune("pipeline", "status", "--config", str(config), "--json", capsys=capsys)
    status = {r["stage"]: r for r in json.loads(out)}
    assert status["quality"]["state"] == "FAILED" and "every row was rejected" in status["quality"]["error"]

    (tmp_path / "rules.yaml").write_text(RULES)  # fixed: the same run picks up at the failed stage
    code, _, err = vidtune("pipeline", "run", "--config", str(config), "--until", "export", capsys=capsys)
    assert code == 0, err
    assert "transcode: done already" in err and "quality: resuming" in err
    assert stage_state(work, "export")["state"] == "SUCCEEDED"


def test_bad_pipeline_files_are_refused_with_the_setting_named():
    base = stages.render_yaml("labels/", "archive", "work")
    assert stages.parse(base).settings == stages.default_settings()
    for edit, message in [({"stages": {"transcod": {}}}, "unknown stage 'transcod'"),
                          ({"stages": {"train": {"max_step": 3}}}, "unknown setting 'max_step'"),
                          ({"stages": {"quality": {"probe": "yes"}}}, r"stages.quality.probe: expected bool"),
                          ({"work": ""}, "work: required")]:
        doc = yaml.safe_load(base)
        for k, v in edit.items():
            doc[k] = v
        with pytest.raises(Exception, match=message):
            stages.parse(yaml.safe_dump(doc))
    with pytest.raises(Exception, match="--until 'nope'"):
        stages.stages_until("nope")


def test_the_whole_pipeline_to_a_verdict(tmp_path, archive, capsys):
    """Every stage, with tiny random models (the scores mean nothing; the plumbing is what is tested)."""
    config = write_config(tmp_path, archive, capsys, train={"config": {"epochs": 1}},
                          generate={"seeds": [0], "max_prompts": 1, "num_frames": 5, "steps": 2},
                          score={"tiny_metric_models": True, "fvd_size": 32})
    work = tmp_path / "work"
    code, out, err = vidtune("pipeline", "run", "--config", str(config), capsys=capsys)
    assert code == 0, err
    result = json.loads(out[out.index("{\n"):])  # after what libraries print on import
    assert list(result) == list(stages.STAGE_NAMES)
    assert (work / "compare" / "report.html").exists()
    report = json.loads((work / "compare" / "report.json").read_text())
    assert set(report["checkpoints"]) >= {"base"} and len(report["checkpoints"]) >= 2
    assert "base: grade" in err                                   # the verdict per checkpoint is printed
    prompts = [json.loads(line) for line in (work / "generate" / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 1 and prompts[0]["prompt"]
    reference = [json.loads(line) for line in (work / "score" / "reference.jsonl").read_text().splitlines()]
    assert reference and all(".wan-480p-" in r["video"] for r in reference)
    code, out, err = vidtune("pipeline", "run", "--config", str(config), capsys=capsys)
    assert code == 0 and err.count("done already") == len(stages.STAGE_NAMES)


def test_status_of_a_pipeline_never_run(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text(stages.render_yaml(str(tmp_path / "l"), str(tmp_path), str(tmp_path / "work")))
    code, out, _ = vidtune("pipeline", "status", "--config", str(config), capsys=capsys)
    assert code == 0 and out.count("NOT STARTED") == len(stages.STAGE_NAMES)
