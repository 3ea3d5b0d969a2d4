"""The metric pass (decode once, threads, batches across videos, oneDNN image tower) computes what the naive
one-frame-at-a-time path of bench/bench_evaluate.py computes, on real mp4 files with the real model classes."""
from __future__ import annotations

import numpy as np
import torch

from bench.bench_evaluate import assert_same_metrics, metric_pass, naive_metrics
from eval_clips import noise_clip, textured_clip

from vidtune.evaluate.scoring import Scorer, ScoreSettings
from vidtune.evaluate.videoio import write_mp4


def test_metric_pass_equals_the_naive_path_on_every_video(tmp_path, tiny_clip_dir, tiny_i3d_path):
    scorer = Scorer.load(ScoreSettings(clip_weights=str(tiny_clip_dir), i3d=str(tiny_i3d_path)))
    clips = [textured_clip(t=20, h=48, w=80, seed=1, motion=2), noise_clip(t=17, h=64, w=48),
             np.repeat(textured_clip(t=1, h=40, w=40, seed=2), 18, axis=0)]
    paths = [str(write_mp4(c, tmp_path / f"v{i}.mp4")) for i, c in enumerate(clips)]
    prompt = "바닷가에 파도가 부서지는 장면"
    threads = torch.get_num_threads()
    batched = metric_pass(scorer, paths, prompt)
    assert torch.get_num_threads() == threads  # the pass's one-thread setting does not leak
    for p, b in zip(paths, batched):
        naive = naive_metrics(scorer, p, prompt)
        assert_same_metrics(b, naive, p)
        assert np.isfinite(b[0]["clip_cosine"]) and b[1].shape == naive["features"].shape
    # The three clips differ, so agreement is not agreement on a constant.
    assert batched[1][0]["flicker"] > 5 * batched[0][0]["flicker"] and batched[2][0]["frozen"] == 1.0
