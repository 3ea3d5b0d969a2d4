"""The README's command blocks marked `<!-- readme-test -->` (those that need no GPU, cluster or model
weights), run as written in a shell, in order, on a small generated archive: they cannot drift."""
import csv
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from pipeline_testlib import make_tiny_archive

REPO = Path(__file__).parents[2]
MARK = "<!-- readme-test -->"


def readme_blocks(text: str) -> list[str]:
    """The indented code block after each marker, continuation lines joined."""
    blocks = []
    for part in text.split(MARK)[1:]:
        lines = part.lstrip("\n").splitlines()
        block = []
        for line in lines:
            if line.strip() and not line.startswith("    "):
                break
            block.append(line[4:])
        blocks.append(re.sub(r"\\\n\s*", " ", "\n".join(block).strip()))
    return blocks


def test_readme_blocks_run_as_written(tmp_path, s3_env):
    blocks = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 4 and all(blocks)
    make_tiny_archive(tmp_path / "archive", seconds=5.5, fps=12)
    shim = tmp_path / ".venv" / "bin" / "vidtune"  # `vidtune` and `.venv/bin/vidtune` as the README writes them
    shim.parent.mkdir(parents=True)
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m vidtune.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, **s3_env, "PATH": f"{shim.parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "services"), "VIDTUNE_HOME": str(tmp_path / "home"),
           "VIDTUNE_CACHE_DIR": str(tmp_path / "model-cache"), "NO_PROXY": "127.0.0.1,localhost"}
    for block in blocks:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"README block failed:\n{block}\n--- stderr:\n{run.stderr[-3000:]}"

    # What the blocks promise: the pipeline's export and the hand-run quality export name transcoded clips only.
    for export in (tmp_path / "work" / "export", tmp_path / "qa" / "export"):
        rows = list(csv.DictReader((export / "metadata.csv").open(encoding="utf-8")))
        assert rows and all(".wan-" in r["video"] for r in rows), (export, rows)
    assert (tmp_path / "runs" / "first" / "lora.safetensors").exists()
    assert "kind: Job" in (tmp_path / "train-job.yaml").read_text()
