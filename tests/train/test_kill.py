"""A training process killed with SIGKILL resumes at its last saved step: same steps, same samples, none repeated."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from vidtune.train.runner import run_training

SETTINGS = {"save_every_steps": 2, "epochs": 12}


def _steps(path):
    return [(m["step"], m["samples"]) for m in map(json.loads, path.read_text().splitlines())]


def test_sigkilled_training_resumes_without_losing_or_repeating_samples(tiny_dataset, tmp_path):
    run_training({"preset": "cpu-tiny", **SETTINGS}, str(tiny_dataset), str(tmp_path / "full"))
    expected = _steps(tmp_path / "full" / "metrics.jsonl")
    cmd = [sys.executable, "-m", "vidtune.cli", "train", "run", "--preset", "cpu-tiny", "--quiet",
           "--dataset", str(tiny_dataset), "--out", str(tmp_path / "cut"),
           *[a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / "cut" / "state" / "latest.json"
    deadline = time.monotonic() + 180
    while not (latest.exists() and json.loads(latest.read_text())["step"] >= 4):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < len(expected)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["resumed_from"] == killed_at  # stdout is the JSON result alone
    got = _steps(tmp_path / "cut" / "metrics.jsonl")
    assert got == expected                                   # the same steps with the same samples, in order
    assert len({s for s, _ in got}) == len(got)              # no step twice
