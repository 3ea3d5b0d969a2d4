"""The probe benchmark's decode floor (bench/bench_quality.py) times exactly the frames the sampled probe starts
its samples from: the same points, each a key frame that decodes alone, and none where the points fall between
key frames."""
from __future__ import annotations

import pytest

from bench.bench_quality import decode_floor, key_frame_times
from vidtune.quality.probe import ProbeSettings
from vidtune.samples import make_clip


def test_floor_points_are_the_sampled_key_frames(tmp_path):
    clip = make_clip(tmp_path / "gop.mp4", 160, 96, 4, fps=10, extra=["-g", "10"])
    points = key_frame_times(clip)
    assert points == pytest.approx([0.0, 1.0, 2.0, 3.0])  # 4 key frames, under 8 samples: every one
    assert key_frame_times(clip, samples=2) == pytest.approx([0.0, 3.0])
    decode_floor(clip, points)  # each point decodes alone (asserts a frame)


def test_no_floor_where_samples_fall_between_key_frames(tmp_path):
    clip = make_clip(tmp_path / "long_gop.mp4", 160, 96, 4, fps=25)  # x264's 250-frame interval: one key frame
    assert key_frame_times(clip, ProbeSettings().samples) is None
