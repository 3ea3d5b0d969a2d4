"""Validation: a held-out loss at fixed timesteps with seeded noise, every N steps, without touching training."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from makedata import export_dataset  # noqa: E402

from vidtune.platform.errors import InvalidArgument  # noqa: E402
from vidtune.train.config import load_config  # noqa: E402
from vidtune.train.runner import run_training  # noqa: E402


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_held_out_loss_every_n_steps_is_reproducible_and_leaves_training_unchanged(tiny_dataset, tmp_path):
    held_out = export_dataset(tmp_path / "val-archive", tmp_path / "val", n=2)
    cfg = {"preset": "cpu-tiny", "validation_dataset": str(held_out), "validation_every_steps": 3,
           "validation_timesteps": 2}
    seen = []
    run_training(cfg, str(tiny_dataset), str(tmp_path / "a"), progress=lambda d, t, m: seen.append(m))
    run_training("cpu-tiny", str(tiny_dataset), str(tmp_path / "plain"))
    run_training(cfg, str(tiny_dataset), str(tmp_path / "b"))
    a, b, plain = _metrics(tmp_path / "a"), _metrics(tmp_path / "b"), _metrics(tmp_path / "plain")
    assert [m["step"] for m in a if "val_loss" in m] == [3, 6, 8]  # every 3 steps and at the end
    assert all(len(m["val_loss_by_timestep"]) == 2 for m in a if "val_loss" in m)
    assert [m["loss"] for m in a] == [m["loss"] for m in plain]   # validating draws none of training's numbers
    assert [m.get("val_loss") for m in a] == [m.get("val_loss") for m in b]  # seeded noise: same values
    assert any("val_loss=" in msg for msg in seen)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "Validation" in report and "held-out loss" in report
    vals = [m["val_loss"] for m in a if "val_loss" in m]
    assert len(set(vals)) == 3  # the LoRA changes, so does its held-out loss


def test_validation_needs_the_cache():
    with pytest.raises(InvalidArgument, match="use_cache"):
        load_config({"preset": "cpu-tiny", "validation_dataset": "/data/val", "use_cache": False})
