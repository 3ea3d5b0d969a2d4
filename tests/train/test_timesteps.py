"""Timestep sampling and loss weighting: known distributions, defaults unchanged, options train."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from vidtune.platform.errors import InvalidArgument
from vidtune.train.config import load_config
from vidtune.train.runner import run_training
from vidtune.train.timesteps import nearest_index, sample_sigma


def _draws(method, n=4000, **kw):
    torch.manual_seed(0)
    return [sample_sigma(method, **kw) for _ in range(n)]


def test_samplers_have_their_known_medians():
    # seeded, 4000 draws: the standard error of a median is ~0.01 here, the tolerances are 3x that
    assert abs(statistics.median(_draws("logit_normal")) - 0.5) < 0.03
    assert abs(statistics.median(_draws("logit_normal", mean=1.0)) - torch.sigmoid(torch.tensor(1.0)).item()) < 0.03
    assert abs(statistics.median(_draws("sigmoid", scale=2.0)) - 0.5) < 0.03
    assert abs(statistics.median(_draws("shift", shift=3.0)) - 0.75) < 0.03  # 3 * 0.5 / (1 + 2 * 0.5)
    spread = statistics.pstdev(_draws("sigmoid", scale=3.0)) > statistics.pstdev(_draws("sigmoid", scale=0.5))
    assert spread and all(0 <= s <= 1 for s in _draws("shift"))


def test_nearest_index_stays_inside_the_expert_range():
    sigmas = torch.linspace(1, 0, 1000)
    assert nearest_index(sigmas, 0.5, 0, 1000) in (499, 500)
    assert nearest_index(sigmas, 0.99, 600, 1000) == 600  # high noise asked, low-noise expert: its edge


def test_unknown_sampling_names_the_field():
    with pytest.raises(InvalidArgument, match="timestep_sampling"):
        load_config({"preset": "cpu-tiny", "timestep_sampling": "cosine"})
    assert load_config("cpu-tiny").fingerprint() == load_config({"preset": "cpu-tiny", "loss_weighting": "default"}).fingerprint()
    assert load_config("cpu-tiny").fingerprint() != load_config({"preset": "cpu-tiny", "loss_weighting": "none"}).fingerprint()


def test_other_samplings_and_weightings_train(tiny_dataset, tmp_path):
    losses = {}
    for sampling, weighting in (("uniform", "default"), ("logit_normal", "none"), ("shift", "default")):
        out = tmp_path / f"{sampling}-{weighting}"
        run_training({"preset": "cpu-tiny", "timestep_sampling": sampling, "loss_weighting": weighting},
                     str(tiny_dataset), str(out), max_steps=3)
        losses[sampling] = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(len(v) == 3 and all(map(torch.isfinite, map(torch.tensor, v))) for v in losses.values())
    assert losses["logit_normal"] != losses["uniform"] != losses["shift"]
