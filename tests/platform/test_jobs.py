import threading
import time

import pytest

from vidtune.platform.errors import FailedPrecondition, InvalidArgument
from vidtune.platform.jobs import (CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobManager, JobStore, execute,
                                   new_record, service_of, transition)


def test_state_machine_allows_only_forward_moves():
    rec = new_record("transcode", "transcode.batch", {})
    assert rec["state"] == QUEUED and service_of(rec["id"]) == "transcode"
    transition(rec, RUNNING)
    assert rec["attempt"] == 1 and rec["started"]
    transition(rec, SUCCEEDED)
    assert rec["finished"]
    with pytest.raises(FailedPrecondition, match="is SUCCEEDED and cannot become RUNNING"):
        transition(rec, RUNNING)


def _counting_handler(calls):
    def handler(ctx):
        for i in range(3):
            ctx.check_cancelled()
            calls.append(i)
            ctx.progress(i + 1, 3, f"item {i}")
        return {"count": 3}
    return handler


def test_manager_runs_persists_and_reports_progress(storage, jobs_root):
    calls = []
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler(calls)})
    m.start()
    try:
        rec = m.submit("t.count", {"x": 1})
        states = [r["state"] for r in m.watch(rec["id"], timeout=20)]
        final = m.get(rec["id"])
        assert states[-1] == SUCCEEDED and final["result"] == {"count": 3}
        assert final["progress"]["done"] == 3 and final["progress"]["percent"] == 100.0
        # the record is in the object store, readable by another process
        assert JobStore(storage, jobs_root, "transcode").load(rec["id"])["state"] == SUCCEEDED
        assert [r["id"] for r in m.list(state=SUCCEEDED)] == [rec["id"]]
    finally:
        m.stop()


def test_unknown_kind_and_backend_are_invalid(storage, jobs_root):
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler([])})
    with pytest.raises(InvalidArgument, match="no job kind 't.nope'"):
        m.submit("t.nope", {})
    with pytest.raises(InvalidArgument, match="backend 'kubernetes' is not available"):
        m.submit("t.count", {}, backend="kubernetes")


def test_failure_keeps_the_reason_and_code(storage, jobs_root):
    def broken(ctx):
        raise InvalidArgument("input s3://b/x.mp4: not a video")

    store = JobStore(storage, jobs_root, "transcode")
    rec = new_record("transcode", "t.broken", {})
    store.save(rec)
    out = execute(rec, broken, storage, store)
    assert out["state"] == FAILED and out["error"] == {"code": 3, "message": "input s3://b/x.mp4: not a video"}


def test_cancel_a_running_job(storage, jobs_root):
    started = threading.Event()

    def slow(ctx):
        started.set()
        for i in range(200):
            ctx.check_cancelled()
            time.sleep(0.05)
        return {}

    m = JobManager("transcode", storage, jobs_root, {"t.slow": slow})
    m.start()
    try:
        rec = m.submit("t.slow", {})
        assert started.wait(10)
        m.cancel(rec["id"])
        assert list(m.watch(rec["id"], timeout=20))[-1]["state"] == CANCELLED
    finally:
        m.stop()


def test_cancel_before_start_never_runs(storage, jobs_root):
    calls = []
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler(calls)})
    rec = m.submit("t.count", {})          # workers not started: stays queued
    assert m.cancel(rec["id"])["state"] == CANCELLED
    m.start()
    time.sleep(0.5)
    m.stop()
    assert calls == [] and m.get(rec["id"])["state"] == CANCELLED


def test_restart_resumes_queued_and_running_jobs(storage, jobs_root):
    store = JobStore(storage, jobs_root, "transcode")
    queued = new_record("transcode", "t.count", {})
    running = transition(new_record("transcode", "t.count", {}), RUNNING)  # as a crash leaves it
    store.save(queued)
    store.save(running)
    calls = []
    m = JobManager("transcode", storage, jobs_root, {"t.count": _counting_handler(calls)})
    m.start()
    try:
        for rec in (queued, running):
            assert list(m.watch(rec["id"], timeout=20))[-1]["state"] == SUCCEEDED
        assert m.get(running["id"])["attempt"] == 2
    finally:
        m.stop()
