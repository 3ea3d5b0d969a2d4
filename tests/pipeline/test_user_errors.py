"""What a new user following the README ran into: each case fails the way a user saw it before its fix."""
import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest

from vidtune.cli import main
from vidtune.platform.errors import InvalidArgument
from vidtune.platform.storage import join
from vidtune.samples import make_clip

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from makedata import export_dataset  # noqa: E402

TOKEN = "pipeline-test-token"


def small_archive(root: Path) -> Path:
    make_clip(root / "archive/media/nature/a.mp4", 320, 180, 1.0, fps=8)
    (root / "archive/labels").mkdir(parents=True)
    (root / "archive/labels/a.json").write_text(json.dumps({"id": "a", "file_path": "media/nature/a.mp4"}))
    return root / "archive"


def test_store_cp_of_a_dot_slash_directory_keeps_every_key_whole(storage, bucket, tmp_path, monkeypatch):
    small_archive(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["store", "cp", "./archive", join(bucket, "archive")]) == 0
    keys = sorted(u[len(bucket) + 1:] for u in storage.list(bucket + "/"))
    assert keys == ["archive/labels/a.json", "archive/media/nature/a.mp4"]


def test_transcode_of_a_dot_slash_directory_keeps_the_layout_and_nothing_done_fails(tmp_path, monkeypatch, capsys):
    small_archive(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["transcode", "run", "--input", "./archive", "--output", "./clips", "--profile", "wan-480p",
                 "--quiet"]) == 0
    outputs = [str(p.relative_to(tmp_path / "clips")) for p in (tmp_path / "clips").rglob("*.mp4")]
    assert len(outputs) == 1 and outputs[0].startswith("media/nature/a.wan-480p-"), outputs
    capsys.readouterr()
    # A run that transcoded nothing (the input does not exist) is an error, not "0 ok" and exit 0.
    assert main(["transcode", "run", "--input", "./no-such-dir", "--output", "./clips", "--quiet"]) == 2
    assert "every input failed" in capsys.readouterr().err


@pytest.fixture
def transcode_service(serve, storage, jobs_root, monkeypatch):
    from vidtune.registry import module

    monkeypatch.setenv("VIDTUNE_ALLOW_LOCAL_PATHS", "1")
    _, endpoint = serve(module("transcode", "service").definition(), token=TOKEN)
    monkeypatch.setenv("VIDTUNE_TRANSCODE_ENDPOINT", endpoint)
    monkeypatch.setenv("VIDTUNE_TOKEN", TOKEN)
    return endpoint


def test_submit_sends_absolute_paths_and_failures_read_as_failures(transcode_service, storage, jobs_root, tmp_path,
                                                                   monkeypatch, capsys):
    small_archive(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["transcode", "submit", "--input", "./archive", "--output", "./clips", "--profile", "wan-480p",
                 "--watch"]) == 0
    job = json.loads(capsys.readouterr().out)
    # The service may run anywhere: it was sent where the files are, not where the user stood.
    assert job["spec"]["inputs"] == [str(tmp_path / "archive")] and job["spec"]["output"] == str(tmp_path / "clips")

    # A missing input: the job FAILED, the command says so with a non-zero exit.
    assert main(["transcode", "submit", "--input", "./missing", "--output", "./clips", "--watch"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["state"] == "FAILED" and "every input failed" in failed["error"]["message"]
    assert main(["jobs", "watch", failed["id"]]) == 1
    capsys.readouterr()
    assert main(["jobs", "list", "--service", "transcode"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(failed["id"]))
    assert "FAILED" in line and "every input failed" in line and "running (attempt" not in line

    # Watching a cancelled job is not a success either.
    from vidtune.platform.jobs import CANCELLED, JobStore, new_record

    rec = new_record("transcode", "transcode.batch", {"inputs": ["x"], "output": "y"})
    rec["state"] = CANCELLED
    JobStore(storage, jobs_root, "transcode").create(rec)
    assert main(["jobs", "watch", rec["id"]]) == 1


def test_a_finished_training_run_run_again_reports_its_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDTUNE_CACHE_DIR", str(tmp_path / "model-cache"))
    dataset = export_dataset(tmp_path / "raw", tmp_path / "dataset", n=2)
    args = ["train", "run", "--preset", "cpu-tiny", "--dataset", str(dataset), "--out", str(tmp_path / "run"),
            "--set", "epochs=1", "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().err
    assert main(args) == 0                      # the README's way to resume: the same command again
    again = capsys.readouterr().err
    loss = first.split("final loss ")[1].split(";")[0]
    assert loss != "nan" and f"final loss {loss}" in again
    assert "nan" not in (tmp_path / "run" / "report.md").read_text()


def test_train_config_lists_every_set_key_with_type_and_default(capsys):
    assert main(["train", "config"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in out.splitlines()[1:]
            if line and not line.startswith("#")}
    assert rows["lora_rank"] == ["int", "32"] and rows["learning_rate"][0] == "float"
    assert {"epochs", "precision", "weights", "save_every_steps"} <= set(rows)
    # each key's meaning is its comment in the config's source, continuation lines joined; groups are headed
    assert rows["precision"][2].startswith("fp32 (CPU) | fp16 (V100")
    assert rows["hang_timeout_s"][2].endswith("collective timeout. 0: off")
    assert "\n# LoRA\nlora_rank " in out


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def test_a_csv_without_a_caption_column_is_one_clear_error(tmp_path, capsys):
    from vidtune.quality.ingest import ingest

    listing = write_csv(tmp_path / "list.csv", ["id", "file_path", "설명"], [["a", "a.mp4", "바다"]])
    with pytest.raises(InvalidArgument, match=r"no caption column \(looked for caption, prompt.*header has id, "
                                              r"file_path, 설명.*--mapping"):
        ingest(str(listing))
    assert main(["quality", "run", "--manifest", str(listing), "--out", str(tmp_path / "qa"), "--quiet"]) == 2
    assert "no caption column" in capsys.readouterr().err
    (tmp_path / "map.yaml").write_text("caption: 설명\n")      # the fix the message names
    assert ingest(str(listing), mapping=str(tmp_path / "map.yaml")).table.column("caption").to_pylist() == ["바다"]


def test_a_3mb_caption_is_a_rejected_row_not_a_crash(tmp_path):
    from vidtune.quality.ingest import MAX_CAPTION_CHARS, ingest

    rows = [[f"r{i}", f"m/{i}.mp4", "짧은 설명입니다"] for i in range(50)]
    rows[20][2] = "가" * 1_000_000                                 # 3 MB of UTF-8 in one field
    listing = write_csv(tmp_path / "list.csv", ["id", "file_path", "caption"], rows)
    assert os.path.getsize(listing) > 3_000_000
    table = ingest(str(listing)).table
    errors = dict(zip(table.column("id").to_pylist(), table.column("ingest_error").to_pylist()))
    assert table.num_rows == 50 and sum(e is not None for e in errors.values()) == 1
    assert errors["r20"].startswith("caption too large: 1,000,000 characters") and str(f"{MAX_CAPTION_CHARS:,}") in errors["r20"]


def test_a_typo_in_a_rule_field_is_an_error_when_rules_load(tmp_path):
    from vidtune.quality.rules import load_rules, parse_rules

    with pytest.raises(InvalidArgument, match="unknown field 'duraton'.*known: .*duration"):
        parse_rules("rules:\n  - {name: video_duration, type: range, field: duraton, min: 5}\n")
    with pytest.raises(InvalidArgument, match="unknown field 'hash'"):
        parse_rules("rules:\n  - {name: dup, type: near_duplicate, field: hash}\n")
    with pytest.raises(InvalidArgument, match="unknown field 'blurr'"):
        load_rules(None, overrides={"blur": {"field": "blurr"}})


def test_a_quality_run_that_keeps_nothing_fails(tmp_path, capsys):
    listing = write_csv(tmp_path / "list.csv", ["id", "file_path", "caption"], [["a", "../escape.mp4", "x"]])
    assert main(["quality", "run", "--manifest", str(listing), "--out", str(tmp_path / "qa"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "every row was rejected (1 of 1)" in err and "ingest_errors" in err
    assert (tmp_path / "qa" / "rejected.parquet").exists()        # the reasons are still written


def test_a_generation_model_other_than_the_trained_one_is_refused_before_any_stage(tmp_path, capsys):
    import yaml

    from vidtune.pipeline import stages

    archive = small_archive(tmp_path)
    doc = yaml.safe_load(stages.render_yaml(str(archive / "labels"), str(archive), str(tmp_path / "work")))
    doc["stages"]["generate"]["model"] = "wan2.2-ti2v-5b"  # the preset trains the tiny model
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert main(["pipeline", "run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "stages.generate.model 'wan2.2-ti2v-5b' is not the model training trains ('tiny'" in err, err
    assert "set stages.generate.model: tiny-ti2v" in err
    assert not (tmp_path / "work").exists()
    assert main(["pipeline", "run", "--config", str(config), "--until", "transcode", "--quiet"]) == 0  # not needed
