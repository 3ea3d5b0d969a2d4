"""Run hygiene: the same seed gives the same numbers whatever was cached, and old states are pruned."""
from __future__ import annotations

import json
import shutil

from vidtune.train.runner import run_training


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_gives_the_same_losses_with_and_without_a_cache(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDTUNE_CACHE_DIR", str(tmp_path / "fresh-model-cache"))  # tiny weights built mid-run
    cfg = {"preset": "cpu-tiny", "epochs": 1}
    run_training(cfg, str(tiny_dataset), str(tmp_path / "cold"))
    run_training(cfg, str(tiny_dataset), str(tmp_path / "warm-models"))   # weights on disk, latents encoded
    shutil.copytree(tmp_path / "cold" / "cache", tmp_path / "warm-all" / "cache")
    run_training(cfg, str(tiny_dataset), str(tmp_path / "warm-all"))      # weights and latents cached
    monkeypatch.setenv("VIDTUNE_CACHE_DIR", str(tmp_path / "other-model-cache"))
    shutil.copytree(tmp_path / "cold" / "cache", tmp_path / "warm-latents" / "cache")
    run_training(cfg, str(tiny_dataset), str(tmp_path / "warm-latents"))  # latents cached, weights built
    cold = _losses(tmp_path / "cold")
    assert len(cold) == 4
    for other in ("warm-models", "warm-all", "warm-latents"):
        assert _losses(tmp_path / other) == cold, other


def test_keep_states_keeps_that_many_and_leaves_no_empty_directories(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    run_training({"preset": "cpu-tiny", "save_every_steps": 1, "keep_states": 2}, str(tiny_dataset), str(out))
    state = out / "state"
    assert sorted(p.name for p in state.iterdir()) == ["latest.json", "step-00000007", "step-00000008"]
    assert json.loads((state / "latest.json").read_text())["step"] == 8
    assert all(any(p.rglob("*")) for p in state.iterdir() if p.is_dir())
