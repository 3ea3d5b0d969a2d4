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


def test_store_commands_copy_and_list(storage, bucket, tmp_path, s3_env):
    env = {**os.environ, **s3_env}
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/a.txt").write_text("a")
    (tmp_path / "d/sub/b.txt").write_text("bb")

    def vidtune(*args):
        return subprocess.run([sys.executable, "-m", "vidtune.cli", "store", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    assert vidtune("cp", str(tmp_path / "d"), f"{bucket}/up").returncode == 0
    assert storage.read_text(f"{bucket}/up/sub/b.txt") == "bb"
    assert vidtune("cp", str(tmp_path / "d/a.txt"), f"{bucket}/one/").returncode == 0
    assert storage.read_text(f"{bucket}/one/a.txt") == "a"
    r = vidtune("ls", f"{bucket}/up/")
    assert r.stdout.split() == ["1", f"{bucket}/up/a.txt", "2", f"{bucket}/up/sub/b.txt"]
    assert vidtune("cp", f"{bucket}/up/", str(tmp_path / "back")).returncode == 0
    assert (tmp_path / "back/sub/b.txt").read_text() == "bb"
    r = vidtune("cp", f"{bucket}/nothing/", str(tmp_path / "x"))
    assert r.returncode == 2 and "nothing at" in r.stderr
