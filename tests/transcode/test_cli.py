import json
import subprocess
import sys

from vidtune.samples import make_clip


def vidtune(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "vidtune.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_run_in_process_writes_the_report(tmp_path):
    src = tmp_path / "in"
    make_clip(src / "a.mp4", 640, 480, 1.0)
    (src / "b.mp4").write_text("broken")
    r = vidtune("transcode", "run", "--input", str(src), "--output", str(tmp_path / "out"), "--profile", "wan-480p",
                "--workers", "2", "--report", str(tmp_path / "report.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "1 ok (0 already done), 1 failed of 2" in r.stderr and "rejected" in r.stderr and "b.mp4" in r.stderr
    lines = [json.loads(ln) for ln in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert [(ln["status"], bool(ln["output"]), bool(ln["reason"])) for ln in lines] == [("ok", True, False),
                                                                                         ("failed", False, True)]
    assert vidtune("transcode", "run", "--input", str(src), "--output", str(tmp_path / "out"), "--strict").returncode == 3


def test_bad_profile_is_a_usage_error(tmp_path):
    r = vidtune("transcode", "run", "--input", str(tmp_path), "--output", str(tmp_path), "--profile", "wan-4k")
    assert r.returncode == 2 and "invalid choice: 'wan-4k'" in r.stderr
