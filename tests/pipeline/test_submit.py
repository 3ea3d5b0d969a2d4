"""`pipeline run --submit`: each stage a job of its service over gRPC, everything in the object store."""
import csv
import io
import json

import pytest
import yaml
from pipeline_testlib import RULES, make_tiny_archive

from vidtune.cli import main
from vidtune.pipeline import stages
from vidtune.platform.storage import join
from vidtune.registry import module

TOKEN = "pipeline-submit-token"


@pytest.fixture
def services(serve, storage, jobs_root, monkeypatch):
    monkeypatch.setenv("VIDTUNE_TOKEN", TOKEN)
    for name in ("transcode", "quality"):
        _, endpoint = serve(module(name, "service").definition(), token=TOKEN)
        monkeypatch.setenv(f"VIDTUNE_{name.upper()}_ENDPOINT", endpoint)


def test_submitted_stages_run_as_service_jobs_and_rerun_skips_them(services, storage, bucket, tmp_path, capsys):
    archive = make_tiny_archive(tmp_path / "archive")
    for path in sorted(archive.rglob("*")):
        if path.is_file():
            storage.upload(path, join(bucket, "archive", str(path.relative_to(archive))))
    storage.write_text(join(bucket, "rules.yaml"), RULES)
    doc = yaml.safe_load(stages.render_yaml(join(bucket, "archive/labels/"), join(bucket, "archive"),
                                            join(bucket, "work")))
    doc["stages"]["quality"]["rules"] = join(bucket, "rules.yaml")
    doc["stages"]["transcode"]["profile"] = "wan-480p"
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True))

    assert main(["pipeline", "run", "--config", str(config), "--until", "export", "--submit"]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    assert main(["pipeline", "status", "--config", str(config), "--json"]) == 0
    status = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    for stage, prefix in (("transcode", "tc-"), ("quality", "qa-"), ("export", "qa-")):
        assert status[stage]["state"] == "SUCCEEDED" and status[stage]["job_id"].startswith(prefix)
    rows = list(csv.DictReader(io.StringIO(storage.read_text(join(bucket, "work/export/metadata.csv")))))
    assert rows and all(".wan-480p-" in r["video"] for r in rows)
    for line in storage.read_jsonl(join(bucket, "work/export/lineage.jsonl")):
        assert line["source"].startswith(join(bucket, "archive/media/"))
        assert line["transcoded"].startswith(join(bucket, "work/transcode/"))
        assert storage.exists(line["exported"])

    assert main(["pipeline", "run", "--config", str(config), "--until", "export", "--submit"]) == 0
    assert capsys.readouterr().err.count("done already") == 3
