"""Hang watchdog: a rank that stops advancing ends its attempt with its stacks logged, and the retry resumes."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from vidtune.train.watchdog import HANG_EXIT_CODE

# One attempt of a run whose step `hang_at` never finishes (a sleep in the step), as a Job's pod runs it.
ATTEMPT = """
import json, sys, time
from vidtune.train.runner import run_training
dataset, out, hang_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
def stuck_in_a_step(step, entry):
    if step == hang_at:
        time.sleep(3600)
cfg = {"preset": "cpu-tiny", "epochs": 1, "save_every_steps": 2, "hang_timeout_s": 25}
print(json.dumps(run_training(cfg, dataset, out, on_step=stuck_in_a_step)))
"""


def _attempt(dataset, out, hang_at, timeout):
    return subprocess.run([sys.executable, "-c", ATTEMPT, str(dataset), str(out), str(hang_at)],
                          capture_output=True, text=True, timeout=timeout)


def test_a_hung_step_ends_the_attempt_with_stacks_logged_and_the_retry_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    hung = _attempt(tiny_dataset, out, hang_at=3, timeout=600)
    assert time.monotonic() - t0 < 600 - 60  # far sooner than the hour the sleep would take
    assert hung.returncode == HANG_EXIT_CODE, hung.stderr[-3000:]
    assert "rank 0 made no progress for" in hung.stderr and "stage 'training' after step 2" in hung.stderr
    logs = sorted((out / "logs").glob("hang-*-rank0.txt"))
    assert len(logs) == 1
    stacks = logs[0].read_text()
    assert "made no progress" in stacks and "stuck_in_a_step" in stacks and "run_training" in stacks
    heartbeat = json.loads((out / "logs" / "heartbeat-rank0.json").read_text())
    assert heartbeat["rank"] == 0 and heartbeat["stage"] in ("training", "saving the state")
    assert json.loads((out / "state" / "latest.json").read_text())["step"] == 2

    retried = _attempt(tiny_dataset, out, hang_at=0, timeout=600)
    assert retried.returncode == 0, retried.stderr[-3000:]
    result = json.loads(retried.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == 2 and result["steps"] == result["total_steps"] == 4


# Two ranks under torchrun (gloo): rank 1 sleeps in step 3, so rank 0 waits inside the gradient all-reduce.
TWO_RANKS = """
import json, os, sys, time
from vidtune.train.runner import run_training
dataset, out, hang_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
def stuck_on_rank_1(step, entry):
    if step == hang_at and os.environ["RANK"] == "1":
        time.sleep(3600)
cfg = {"preset": "cpu-tiny", "epochs": 2, "save_every_steps": 1, "hang_timeout_s": 25}
result = run_training(cfg, dataset, out, on_step=stuck_on_rank_1)
if os.environ["RANK"] == "0":
    print(json.dumps(result))
"""


def _torchrun(script, dataset, out, hang_at, timeout):
    script.write_text(TWO_RANKS)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(dataset), str(out), str(hang_at)],
                          capture_output=True, text=True, timeout=timeout)


def test_a_rank_hung_while_the_other_waits_in_a_collective_ends_both_and_the_retry_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    hung = _torchrun(tmp_path / "attempt.py", tiny_dataset, out, hang_at=2, timeout=600)
    assert hung.returncode != 0
    assert "made no progress" in hung.stderr, hung.stderr[-3000:]
    # The first rank to fire logs its stacks below logs/; torchrun then terminates the other, whose
    # stacks go to stderr on SIGTERM (unless its own watchdog fired first): both ranks' stacks are logged.
    files = sorted((out / "logs").glob("hang-*-rank*.txt"))
    assert files
    logged = hung.stderr + "".join(f.read_text() for f in files)
    assert "stuck_on_rank_1" in logged                     # the sleeping rank
    assert "backward" in logged                            # the rank waiting in the gradient all-reduce
    saved = json.loads((out / "state" / "latest.json").read_text())["step"]
    assert saved == 2

    retried = _torchrun(tmp_path / "attempt.py", tiny_dataset, out, hang_at=0, timeout=600)
    assert retried.returncode == 0, retried.stderr[-3000:]
    result = json.loads(retried.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == saved and result["steps"] == result["total_steps"] == 4
