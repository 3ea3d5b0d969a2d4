"""`vidtune up`, a job submitted through the CLI and followed to its end, then `vidtune down`."""
import json
import os
import subprocess
import sys
from pathlib import Path

from vidtune.platform.objectstore import free_ports
from vidtune.samples import make_clip


def test_local_stack_up_submit_watch_down(tmp_path):
    env = {**os.environ, "VIDTUNE_HOME": str(tmp_path / "home")}
    for k in [k for k in env if k.startswith("VIDTUNE_S3") or k == "VIDTUNE_JOBS_ROOT"]:
        del env[k]

    def vidtune(*args, timeout=180):
        return subprocess.run([sys.executable, "-m", "vidtune.cli", *args], capture_output=True, text=True,
                              env=env, timeout=timeout)

    base = free_ports(1)[0]
    r = vidtune("up", "--services", "transcode", "--base-port", str(base))
    assert r.returncode == 0, r.stderr
    try:
        state = json.loads((tmp_path / "home/stack.json").read_text())
        assert set(state["pids"]) == {"objectstore", "transcode"} and state["ports"]["transcode"] == base
        r = vidtune("health", "--port", str(base))
        assert r.returncode == 0 and r.stdout.strip() == "SERVING"
        make_clip(tmp_path / "in/a.mp4", 320, 240, 1.0)
        r = vidtune("transcode", "submit", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--watch")
        assert r.returncode == 0, r.stderr
        job = json.loads(r.stdout)
        assert job["state"] == "SUCCEEDED" and job["result"]["ok"] == 1
        assert list(Path(tmp_path / "out").glob("a.wan-720p-*.mp4"))
        r = vidtune("jobs", "list", "--service", "transcode")
        assert job["id"] in r.stdout and "SUCCEEDED" in r.stdout
        r = vidtune("jobs", "get", job["id"])
        assert json.loads(r.stdout)["id"] == job["id"]
    finally:
        r = vidtune("down")
    assert "stopped: transcode, objectstore" in r.stdout
    for pid in state["pids"].values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not (tmp_path / "home/stack.json").exists()
