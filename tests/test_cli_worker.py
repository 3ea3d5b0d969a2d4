"""`vidtune worker`: under torchrun every rank runs the handler, only rank 0 writes the job record."""
from __future__ import annotations

import json

import pytest
import yaml

import vidtune.registry
from vidtune.cli import main
from vidtune.platform.errors import NotFound
from vidtune.platform.jobs import RUNNING, SUCCEEDED, JobStore, new_record, transition


class FakeTasks:
    """A tasks module whose one job kind notes which rank ran it and reports progress."""

    def __init__(self):
        from vidtune.platform.kinds import JobKind

        self.runs: list[dict] = []
        self.KINDS = [JobKind("evaluate.compare", self.handler, required=("scores",))]
        self.HANDLERS = {"evaluate.compare": self.handler}

    def handler(self, ctx):
        import os

        for i in range(3):
            ctx.progress(i + 1, 3, f"step {i + 1}", force=True)
        self.runs.append({"rank": os.environ.get("RANK"), "spec": dict(ctx.spec), "job_id": ctx.job_id})
        return {"steps": 3}


@pytest.fixture
def tasks(monkeypatch):
    fake = FakeTasks()
    real = vidtune.registry.module
    monkeypatch.setattr(vidtune.registry, "module",
                        lambda service, part: fake if part == "tasks" else real(service, part))
    return fake


def _worker(*args: str) -> int:
    return main(["worker", "--service", "evaluate", *args])


def test_only_rank_zero_writes_the_record(storage, jobs_root, tasks, monkeypatch, capsys):
    store = JobStore(storage, jobs_root, "evaluate")
    rec = new_record("evaluate", "evaluate.compare", {"scores": ["s3://b/s"]}, backend="kubernetes")
    store.create(rec)

    monkeypatch.setenv("RANK", "1")
    assert _worker("--job-id", rec["id"]) == 0
    assert tasks.runs[-1] == {"rank": "1", "spec": rec["spec"], "job_id": rec["id"]}
    assert store.load(rec["id"]) == rec, "a rank > 0 must not touch the record"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["state"] == SUCCEEDED

    monkeypatch.setenv("RANK", "0")
    assert _worker("--job-id", rec["id"]) == 0
    final = store.load(rec["id"])
    assert final["state"] == SUCCEEDED and final["result"] == {"steps": 3}
    assert final["progress"]["done"] == 3 and final["attempt"] == 1
    assert len(tasks.runs) == 2


def test_a_rank_joining_a_running_job_still_runs_the_handler(storage, jobs_root, tasks, monkeypatch):
    store = JobStore(storage, jobs_root, "evaluate")
    rec = new_record("evaluate", "evaluate.compare", {}, backend="kubernetes")
    transition(rec, RUNNING)  # rank 0 got there first
    store.create(rec)
    monkeypatch.setenv("RANK", "3")
    assert _worker("--job-id", rec["id"]) == 0
    assert tasks.runs and store.load(rec["id"])["state"] == RUNNING


def test_spec_creates_the_record_on_rank_zero_only(storage, jobs_root, tasks, monkeypatch, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"scores": ["s3://b/scores"], "output": "s3://b/report"}))
    store = JobStore(storage, jobs_root, "evaluate")

    monkeypatch.setenv("RANK", "1")
    assert _worker("--job-id", "first-report", "--spec", str(spec_file), "--kind", "evaluate.compare") == 0
    assert tasks.runs[-1]["spec"]["output"] == "s3://b/report"
    with pytest.raises(NotFound):
        store.load("first-report")

    monkeypatch.delenv("RANK")  # run alone: rank 0
    assert _worker("--job-id", "first-report", "--spec", str(spec_file), "--kind", "evaluate.compare") == 0
    record = store.load("first-report")
    assert record["state"] == SUCCEEDED and record["backend"] == "kubernetes"
    assert record["spec"] == {"scores": ["s3://b/scores"], "output": "s3://b/report"}
    # A rerun of a finished job does nothing.
    assert _worker("--job-id", "first-report", "--spec", str(spec_file), "--kind", "evaluate.compare") == 0
    assert len(tasks.runs) == 2


def test_bad_rank_and_unknown_kind_are_clear_errors(storage, jobs_root, tasks, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RANK", "zero")
    assert _worker("--job-id", "x-1") == 2
    assert "RANK='zero' is not a number" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("{}")
    assert _worker("--job-id", "x-2", "--spec", str(spec_file), "--kind", "train.run") == 2
    assert "--kind 'train.run' is not a evaluate job kind" in capsys.readouterr().err
    assert not tasks.runs
