"""Every pixel metric, the overall score and the grades on ffmpeg-made clips whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pytest
from ffmpeg_clips import DEGENERATE, FILTERS, make_clip, rescale

from vidtune.evaluate.framestats import laplacian_variance, luma, to_analysis
from vidtune.evaluate.grades import grade, load_config, quality_score
from vidtune.evaluate.scoring import pixel_statistics
from vidtune.evaluate.videoio import read_frames, uniform_indices


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("known")
    return {k: read_frames(make_clip(k, d / f"{k}.mp4"))[0] for k in FILTERS}


@pytest.fixture(scope="module")
def stats(clips):
    return {k: pixel_statistics(f, uniform_indices(len(f), 16), 100.0) for k, f in clips.items()}


def test_flicker_catches_noise_boiling_and_local_flicker_but_not_motion(stats, clips):
    s = stats
    assert s["moving"]["flicker"] < 5.0                 # motion explained by the flow is not flicker
    assert s["moving"]["frame_difference"] > 2 * s["moving"]["flicker"]
    assert s["boiling"]["flicker"] > 5.0                # fresh noise on a still (sd ~ 12 levels)
    assert s["flicker"]["flicker"] > 20.0               # +-50 on each half, every other frame
    assert s["noise"]["flicker"] > 40.0
    assert s["frozen"]["flicker"] < 0.01 and s["blank"]["flicker"] == 0.0  # (a coding ripple of 1e-4)
    # Local flicker keeps the frame-mean luma nearly constant: a mean-luma measure would miss it.
    means = luma(np.stack([to_analysis(f) for f in clips["flicker"]])).reshape(len(clips["flicker"]), -1).mean(1)
    assert np.abs(np.diff(means)).max() < 6.0


def test_motion_and_frozen_flag_tell_stills_from_moving_pictures(stats):
    s = stats
    assert s["moving"]["motion"] > 2.0 and s["moving"]["frozen"] == 0.0
    for still in ("frozen", "blank"):
        assert s[still]["motion"] < 0.05 and s[still]["frozen"] == 1.0 and s[still]["frame_difference"] < 0.01
    assert s["noise"]["frozen"] == 0.0 and s["boiling"]["frozen"] == 0.0  # they change; flicker catches them


def test_sharpness_and_colour_on_blank_and_pattern(stats):
    assert stats["blank"]["sharpness_lapvar"] == 0.0 and stats["blank"]["colour_diversity"] == 0.0
    assert stats["moving"]["sharpness"] > 0.8 and stats["moving"]["hue_entropy"] > 0.5


def test_sharpness_is_the_same_for_the_same_content_at_any_output_size(tmp_path):
    src = make_clip("moving", tmp_path / "big.mp4", 1664, 960, frames=3)
    values, native = [], []
    for w, h in ((416, 240), (832, 480), (1280, 738), (1664, 960)):
        path = src if w == 1664 else rescale(src, tmp_path / f"{w}.mp4", w, h)
        frames, _ = read_frames(path)
        values.append(pixel_statistics(frames, np.arange(len(frames)), 100.0)["sharpness"])
        native.append(float(laplacian_variance(frames).mean()))
    assert max(values) / min(values) < 1.10, values
    assert max(native) / min(native) > 1.3  # measured at native size, the same content read differently


def _with_perfect_clip(m: dict, cfg: dict) -> dict:
    """The clip as if CLIP said it matched its prompt perfectly and looked consistent: the most a
    degenerate video could get from the CLIP side."""
    out = {**m, "clip_cosine": 0.36, "temporal_consistency": 1.0}
    out["quality"] = quality_score(out, cfg)
    return out


def test_degenerate_videos_score_below_the_moving_pattern_and_grade_at_most_c(stats):
    cfg = load_config()
    scored = {k: _with_perfect_clip(m, cfg) for k, m in stats.items()}
    good = scored["moving"]
    assert grade(good, cfg)[0] in ("S", "A")
    for k in DEGENERATE:
        assert scored[k]["quality"] < good["quality"] - 10, (k, scored[k]["quality"], good["quality"])
        assert grade(scored[k], cfg)[0] in ("C", "D"), (k, grade(scored[k], cfg))
    # Without CLIP there is no overall score and no letter, not a score on the remaining components.
    assert math.isnan(quality_score(stats["moving"], cfg)) and grade(stats["moving"], cfg)[0] == "incomplete"
