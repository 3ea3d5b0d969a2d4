"""Sampled scores against the full decode on clips with known content, and damage the sampled probe must
still find: every case a full decode reports."""
from __future__ import annotations

import random

import pytest

from vidtune.platform.errors import InvalidArgument
from vidtune.quality.probe import ProbeSettings, probe_file, sample_times
from vidtune.samples import ffmpeg_run, make_clip
from vidtune.transcode.profiles import PROFILES

FULL = ProbeSettings(decode="full")
# Tolerances of a sampled score against the full decode (8 samples): blur is a mean over sampled frames
# (one sample of 8 is 12.5 % of it: a clip a third flat colour lands 18 % off), motion a median over 8
# pairs instead of 12, the ratios count sampled frames, cuts are found between consecutive sampled frames.
BLUR_REL, MOTION_ABS, MOTION_REL, RATIO_ABS = 0.25, 0.05, 0.20, 0.25
# A third or a half of these is one still frame: a median of their flow may land in either mode.
MIXED = {"cuts.mp4", "half_black.mp4", "black_after_3_long_gop.mp4"}
# How the transcoder encodes (B frames, x264's default GOP of 250 frames: one key frame in these clips).
TRANSCODED = ["-preset", PROFILES["wan-720p"].preset, "-crf", str(PROFILES["wan-720p"].crf)]


@pytest.fixture(scope="module")
def clips(media_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("sampled")
    made = {name: media_dir / name for name in ("moving.mp4", "mandel.mp4", "still.mp4", "black.mp4",
                                                "blurry.mp4", "cuts.mp4", "rescaled.mp4")}
    # Key frames every second (the layout sampled decode is fast on) and a longer clip half of it black.
    made["moving_gop.mp4"] = make_clip(d / "moving_gop.mp4", 160, 96, 4, fps=10, extra=["-g", "10"])
    made["mandel_gop.mp4"] = make_clip(d / "mandel_gop.mp4", 128, 96, 4, fps=10, source="mandelbrot",
                                       extra=["-g", "10"])
    made["half_black.mp4"] = make_clip(d / "half_black.mp4", 128, 72, 4, fps=10, extra=[
        "-g", "10", "-vf", "drawbox=enable='gte(t,2)':c=black:t=fill"])
    # The transcoder's layout: 6 s at 25 fps from one key frame, so samples lie up to 6 s into a GOP.
    made["moving_long_gop.mp4"] = make_clip(d / "moving_long_gop.mp4", 160, 96, 6, fps=25, extra=TRANSCODED)
    made["mandel_long_gop.mp4"] = make_clip(d / "mandel_long_gop.mp4", 128, 96, 6, fps=25, source="mandelbrot",
                                            extra=TRANSCODED)
    made["black_after_3_long_gop.mp4"] = make_clip(d / "black_after_3_long_gop.mp4", 128, 72, 6, fps=25, extra=[
        *TRANSCODED, "-vf", "drawbox=enable='gte(t,3)':c=black:t=fill"])
    made["cuts_long_gop.mp4"] = make_clip(d / "cuts_long_gop.mp4", 128, 72, 6, fps=25, extra=[
        *TRANSCODED, "-vf", "drawbox=enable='between(t,2,4)':c=red:t=fill"])
    return made


def test_each_sampled_score_is_within_its_tolerance_of_the_full_decode(clips):
    for name, path in clips.items():
        full, sampled = probe_file(path, settings=FULL), probe_file(path)
        assert sampled["decodable"] and full["decodable"], name
        assert sampled["probe_frames"] == full["probe_frames"], name
        assert sampled["blur"] == pytest.approx(full["blur"], rel=BLUR_REL), name
        if name not in MIXED:
            assert abs(sampled["motion"] - full["motion"]) <= MOTION_ABS + MOTION_REL * full["motion"], name
        assert abs(sampled["black_ratio"] - full["black_ratio"]) <= RATIO_ABS, name
        assert abs(sampled["frozen_ratio"] - full["frozen_ratio"]) <= RATIO_ABS, name
        assert sampled["scene_cuts"] == full["scene_cuts"], name


def test_sampled_scores_still_separate_the_known_clips(clips):
    s = {name: probe_file(path) for name, path in clips.items()}
    assert s["half_black.mp4"]["black_ratio"] == pytest.approx(0.5, abs=RATIO_ABS)
    assert s["black.mp4"]["black_ratio"] == 1.0 and s["moving_gop.mp4"]["black_ratio"] == 0.0
    assert s["still.mp4"]["frozen_ratio"] == 1.0 and s["still.mp4"]["motion"] < 0.01
    assert s["moving_gop.mp4"]["motion"] > 0.5 and s["moving_gop.mp4"]["frozen_ratio"] == 0.0
    assert s["blurry.mp4"]["blur"] < 15 < 1000 < s["moving_gop.mp4"]["blur"]
    assert s["cuts.mp4"]["scene_cuts"] == 2 and s["cuts_long_gop.mp4"]["scene_cuts"] == 2
    assert s["black_after_3_long_gop.mp4"]["black_ratio"] == pytest.approx(0.5, abs=RATIO_ABS)
    assert s["mandel_long_gop.mp4"]["frozen_ratio"] <= RATIO_ABS and s["mandel_long_gop.mp4"]["motion"] > 0.05


def test_run_ups_skip_only_frames_nothing_is_predicted_from(clips, monkeypatch):
    # x264's B frames (the transcoder's layout) are found unreferenced; decoding them too changes nothing.
    import av

    from vidtune.quality import probe

    path = clips["moving_long_gop.mp4"]
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        scan = probe._scan_packets(c, stream, probe._nal_length_size(stream))
    assert scan.error is None and len(scan.times) == 150 and 40 <= len(scan.unreferenced) < 150 - 30
    with av.open(str(clips["moving_gop.mp4"])) as c:  # ultrafast: no B frames, every frame is a reference
        stream = c.streams.video[0]
        assert not probe._scan_packets(c, stream, probe._nal_length_size(stream)).unreferenced
    skipping = probe_file(path)
    scan_packets = probe._scan_packets

    def decode_every_frame(*args):
        found = scan_packets(*args)
        found.unreferenced.clear()
        return found

    monkeypatch.setattr(probe, "_scan_packets", decode_every_frame)
    every = probe_file(path)
    for score in ("blur", "motion", "black_ratio", "frozen_ratio", "scene_cuts", "phash", "probe_frames"):
        assert skipping[score] == every[score], score


def test_key_frames_are_sampled_when_there_are_enough():
    keys = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert sample_times(0.0, 6.0, keys, 8) == keys                   # every key frame, no run-up
    assert sample_times(0.0, 6.0, keys, 3) == [0.0, 2.0, 5.0]          # evenly chosen among them
    # One key frame in 4 s: evenly spaced times, the first moved onto the key frame.
    assert sample_times(0.0, 4.0, [0.0], 4) == [0.0, 1.5, 2.5, 3.5]


def test_unknown_decode_mode_is_refused():
    with pytest.raises(InvalidArgument, match="decode"):
        ProbeSettings(decode="fast")


def _damaged_copies(src: bytes, seed: int = 0) -> dict[str, bytes]:
    """Overwritten middles (random, zero and 0xff bytes of several lengths at several places) and cuts."""
    rng = random.Random(seed)
    out = {}
    for frac in (0.3, 0.5, 0.7):
        for kind in ("random", "zeros", "ones"):
            for length in (16, 300, 3000):
                b = bytearray(src)
                at = int(len(b) * frac)
                b[at:at + length] = {"random": bytes(rng.randrange(256) for _ in range(length)),
                                     "zeros": bytes(length), "ones": b"\xff" * length}[kind]
                out[f"{kind}_{frac}_{length}"] = bytes(b)
    for frac in (0.3, 0.6, 0.9, 0.99):
        out[f"cut_{frac}"] = src[:int(len(src) * frac)]
    return out


@pytest.mark.parametrize("layout", [["-g", "25"], TRANSCODED], ids=["gop_1s", "transcoded_long_gop"])
def test_sampled_probe_finds_every_damage_the_full_decode_finds(tmp_path, layout):
    # Header first (as the transcoder writes); key frames every second, or the transcoder's encoding with one
    # key frame and B frames the run-ups skip: damage lands between key frames and in skipped frames.
    raw = make_clip(tmp_path / "raw.mp4", 160, 96, 4, fps=25, extra=layout)
    ffmpeg_run(["-i", str(raw), "-c", "copy", "-movflags", "+faststart", str(tmp_path / "src.mp4")])
    found_by_full = 0
    for name, data in _damaged_copies((tmp_path / "src.mp4").read_bytes()).items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        full, sampled = probe_file(path, settings=FULL), probe_file(path)
        if full["decodable"] is False:
            found_by_full += 1
            assert sampled["decodable"] is False, f"{name}: full decode says {full['probe_error']}"
            assert path.name in sampled["probe_error"]
    assert found_by_full >= 10  # the corpus really contains damage a decode reports
    assert probe_file(tmp_path / "src.mp4")["decodable"] is True
