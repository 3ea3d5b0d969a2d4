"""The job runtime on real processes: `vidtune serve transcode` replicas, a private weed mini, ffmpeg.

Each test runs one scenario of `make chaos` (bench/chaos.py) with fewer clips, and asserts that it held;
the row's figures and problems are the failure message.
"""
from __future__ import annotations

import pytest

from bench import chaos as chaos_mod

CLIPS = 8   # the job that must outlast a second replica's start-up
SHORT = 5   # the others


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    # A store of its own: the store-restart scenario stops and restarts it.
    stack = chaos_mod.Chaos(tmp_path_factory.mktemp("chaos"), clips=CLIPS)
    yield stack
    stack.close()


@pytest.fixture
def run(chaos):
    def run_scenario(fn, **kw) -> chaos_mod.Row:
        try:
            return fn(chaos, **kw)
        finally:
            for r in chaos.replicas:
                r.close()
            chaos.replicas.clear()
    return run_scenario


def _held(row: chaos_mod.Row) -> None:
    assert row.held, f"{row.scenario}: {row.problems} {row.figures}"


def test_two_replicas_run_one_job_once(run):
    row = run(chaos_mod.two_replicas_one_job, n=CLIPS)
    _held(row)
    assert row.figures["encodes"] == CLIPS and row.figures["attempt"] == 1


def test_sigterm_mid_job_hands_it_back_and_a_restart_finishes_it(run):
    row = run(chaos_mod.sigterm_then_restart, n=SHORT)
    _held(row)
    assert row.figures["exit_code"] == 0 and row.figures["attempt"] == 2


def test_kill9_mid_job_the_survivor_takes_over(run):
    row = run(chaos_mod.kill9_with_survivor, n=SHORT)
    _held(row)
    assert row.figures["attempt"] == 2


@pytest.mark.slow
def test_store_restart_mid_job_the_job_carries_on(run):
    row = run(chaos_mod.store_restart, n=SHORT)
    _held(row)
    assert row.figures["submit"] == "UNAVAILABLE"


def test_1000_idle_streams_leave_health_and_getjob_fast(run):
    row = run(chaos_mod.idle_streams, n=CLIPS, calls=30)
    _held(row)
    assert row.figures["watch_streams"] == 1000 and row.figures["getjob_p99_ms"] < 1000


def test_the_server_survives_streams_dropped_at_once(run):
    _held(run(chaos_mod.cancel_storm, n=CLIPS, rounds=2))


def test_report_aimed_at_a_record_is_refused(run):
    _held(run(chaos_mod.report_aimed_at_a_record, n=1))


def test_junk_under_the_jobs_root_does_not_stop_a_restart(run):
    _held(run(chaos_mod.junk_under_jobs_root, n=1))


def test_cancel_leaves_the_other_jobs_encodes_alone(run):
    row = run(chaos_mod.cancel_beside_another, n=4)
    _held(row)
    assert row.figures["other_ok"] == 4


@pytest.mark.slow
def test_a_replica_started_during_a_store_outage_answers_liveness(run):
    _held(run(chaos_mod.start_during_store_outage, n=0, wait_s=8))
