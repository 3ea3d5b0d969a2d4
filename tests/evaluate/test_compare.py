"""Verdicts account for seed noise: clear shifts are improved/worse, noise alone is unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from vidtune.evaluate.compare import checkpoint_order, paired_delta, verdict_of
from vidtune.evaluate.grades import load_config


def _records(ck: str, values: dict[tuple[str, int], float], metric: str = "quality") -> list[dict]:
    return [{"checkpoint": ck, "prompt_id": p, "seed": s, "category": "c", "metrics": {metric: v}}
            for (p, s), v in values.items()]


@pytest.fixture
def cfg():
    c = load_config()
    c["verdict"]["bootstrap"] = 400
    return c


def _pair(shift: float, noise: float, seed: int = 0, prompts: int = 6, seeds: int = 3):
    rng = np.random.default_rng(seed)
    # Prompt effects are large and shared by both checkpoints (same prompt, same seed): pairing removes them.
    a = {(f"p{i}", s): 50 + 20 * rng.normal() for i in range(prompts) for s in range(seeds)}
    b = {k: v + shift + noise * rng.normal() for k, v in a.items()}
    return a, b


def test_clear_improvement_is_improved_and_noise_is_unchanged(cfg):
    rng = np.random.default_rng(0)
    a, b = _pair(shift=3.0, noise=1.0)
    d = paired_delta(_records("base", a), _records("epoch-1", b), "quality", "overall", "all", "base", "epoch-1",
                     cfg, rng)
    assert d.verdict == "improved" and d.ci_low > 0 and d.delta == pytest.approx(
        np.mean([b[k] - a[k] for k in a]))
    assert d.percent == pytest.approx(100 * d.delta / d.value_a)
    a, b = _pair(shift=0.0, noise=3.0, seed=1)
    d = paired_delta(_records("base", a), _records("epoch-1", b), "quality", "overall", "all", "base", "epoch-1",
                     cfg, rng)
    assert d.verdict == "unchanged" and d.ci_low < 0 < d.ci_high


def test_lower_is_better_metrics_flip_the_verdict(cfg):
    a, b = _pair(shift=2.0, noise=0.5)
    d = paired_delta(_records("base", a, "flicker"), _records("e", b, "flicker"), "flicker", "overall", "all",
                     "base", "e", cfg, np.random.default_rng(0))
    assert d.verdict == "worse"
    assert verdict_of(-2, -1, lower_is_better=True) == "improved"
    assert verdict_of(float("nan"), float("nan"), lower_is_better=False) == "unchanged"


def test_one_prompt_uses_a_t_interval_over_seeds_and_one_seed_is_unchanged(cfg):
    a = {("p", s): 10.0 + s for s in range(4)}
    b = {k: v + 1.0 + 0.01 * k[1] for k, v in a.items()}
    d = paired_delta(_records("base", a), _records("e", b), "quality", "prompt", "p", "base", "e", cfg,
                     np.random.default_rng(0))
    assert d.verdict == "improved" and "t-interval over 4 seeds" in d.note
    d1 = paired_delta(_records("base", {("p", 0): 1.0}), _records("e", {("p", 0): 9.0}), "quality", "prompt", "p",
                      "base", "e", cfg, np.random.default_rng(0))
    assert d1.verdict == "unchanged" and "too few" in d1.note


def test_checkpoint_order_puts_base_first_and_epochs_numerically():
    assert checkpoint_order(["epoch-10", "epoch-2", "base", "other", "epoch-0"]) == \
        ["base", "epoch-0", "epoch-2", "epoch-10", "other"]


def test_a_real_but_negligible_change_is_unchanged(cfg):
    rng = np.random.default_rng(0)
    a, b = _pair(shift=0.05, noise=0.001)     # CI excludes 0, but 0.1% of a value of ~50
    d = paired_delta(_records("base", a), _records("epoch-1", b), "quality", "overall", "all", "base", "epoch-1",
                     cfg, rng)
    assert d.ci_low > 0 and d.verdict == "unchanged"
    cfg["verdict"]["min_relative_change"] = 0.0
    d = paired_delta(_records("base", a), _records("epoch-1", b), "quality", "overall", "all", "base", "epoch-1",
                     cfg, rng)
    assert d.verdict == "improved"
