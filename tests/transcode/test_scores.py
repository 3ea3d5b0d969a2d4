"""Quality scores computed while transcoding, against the probe decoding the transcoded clip: on clips with a
known answer (moving, frozen, black after 3 s, two hard cuts, noise), in both probe modes, and the verdicts
the default rules give with either set of scores."""
from __future__ import annotations

import csv
import json
import random

import pytest

from vidtune.platform.storage import Storage
from vidtune.quality.ingest import report_scores
from vidtune.quality.manifest import ManifestStore
from vidtune.quality.pipeline import step_filter, step_ingest, step_probe
from vidtune.quality.probe import ProbeSettings, probe_file, scores_version
from vidtune.samples import ffmpeg_run, korean_caption, make_clip
from vidtune.transcode.batch import run_batch
from vidtune.transcode.profiles import Profile

# A 16:9 canvas smaller than the archive's (fast), wider than blur_width, so ffmpeg scales the scored luma
# down as it does at 720p; 4:3 sources get black pillars, as they do in training.
PROFILE = Profile("test-360p", 640, 360)
SCORES = ("blur", "motion", "black_ratio", "frozen_ratio", "scene_cuts")
# Against the full decode of the transcoded clip: the report scores the frames the encoder was given, the
# probe the frames x264 (crf 18) made of them. x264 smooths fine texture a little, so blur reads up to 5 %
# lower after the encode (10 % allowed); motion (optical flow at 160 px) moves by a few hundredths; ratios and cuts count
# the same frames. Perceptual hashes differ by a few of 64 bits at most (near_duplicate allows 8).
FULL_BLUR_REL, FULL_MOTION_ABS, FULL_MOTION_REL, FULL_RATIO_ABS, HASH_BITS = 0.10, 0.03, 0.10, 0.02, 6
# Against the sampled probe (8 points): its own tolerances against the full decode (test_probe_sampled),
# plus the encode's on blur; where a third or a half of the clip is one still picture the median flow of
# 8 pairs may land in either mode, so motion is not compared there (as test_probe_sampled does).
SAMPLED_BLUR_REL, SAMPLED_MOTION_ABS, SAMPLED_MOTION_REL, SAMPLED_RATIO_ABS = 0.35, 0.05, 0.20, 0.25
MIXED = {"black_after_3", "two_cuts"}
# What each clip must score (the known answer), on the report's scores.
EXPECTED = {
    "moving": lambda s: s["motion"] > 0.1 and s["frozen_ratio"] == 0 and s["black_ratio"] == 0 and s["scene_cuts"] == 0,
    "frozen": lambda s: s["motion"] < 0.01 and s["frozen_ratio"] == 1.0,
    "black_after_3": lambda s: abs(s["black_ratio"] - 0.5) < 0.02 and s["scene_cuts"] == 1,
    "two_cuts": lambda s: s["scene_cuts"] == 2,
    "noise": lambda s: s["blur"] > 10_000 and s["frozen_ratio"] == 0,
}


@pytest.fixture(scope="module")
def transcoded(tmp_path_factory):
    """(sources, run_batch summary) for the five clips transcoded to PROFILE."""
    d = tmp_path_factory.mktemp("scored")
    src = d / "archive" / "media"
    make_clip(src / "moving.mp4", 320, 240, 3, fps=25)
    make_clip(src / "frozen.mp4", 320, 240, 3, fps=25, source="color=c=gray")
    make_clip(src / "black_after_3.mp4", 320, 180, 6, fps=25,
              extra=["-vf", "drawbox=enable='gte(t,3)':c=black:t=fill"])
    make_clip(src / "two_cuts.mp4", 320, 180, 3, fps=25,
              extra=["-vf", "drawbox=enable='between(t,1,2)':c=red:t=fill"])
    src.mkdir(parents=True, exist_ok=True)
    ffmpeg_run(["-f", "lavfi", "-i", "nullsrc=s=320x180:r=25,geq=random(1)*255:128:128", "-t", "2",
                "-c:v", "libx264", "-preset", "ultrafast", str(src / "noise.mp4")])
    summary = run_batch(Storage(), [str(src)], str(d / "clips"), PROFILE, workers=2)
    assert summary.failed == 0, [r.reason for r in summary.results]
    return d, summary


def _by_name(summary) -> dict:
    return {r.input.rsplit("/", 1)[-1].removesuffix(".mp4"): r for r in summary.results}


def test_the_report_line_carries_versioned_scores_that_give_the_known_answer(transcoded):
    d, summary = transcoded
    lines = [json.loads(ln) for ln in open(summary.report, encoding="utf-8")]
    assert len(lines) == 5
    for name, r in _by_name(summary).items():
        s = r.scores
        assert s["version"] == scores_version(ProbeSettings())
        assert EXPECTED[name](s), (name, s)
        # The meta object a resumed batch reads back holds the same scores.
        again = run_batch(Storage(), [r.input], str(d / "clips"), PROFILE,
                          report_uri=str(d / "again.jsonl")).results[0]
        assert again.skipped and again.scores == s


@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_scores_match_the_probe_of_the_transcoded_clip(transcoded, mode):
    _, summary = transcoded
    full = mode == "full"
    blur_rel, motion_abs, motion_rel, ratio_abs = (
        (FULL_BLUR_REL, FULL_MOTION_ABS, FULL_MOTION_REL, FULL_RATIO_ABS) if full else
        (SAMPLED_BLUR_REL, SAMPLED_MOTION_ABS, SAMPLED_MOTION_REL, SAMPLED_RATIO_ABS))
    for name, r in _by_name(summary).items():
        s = r.scores
        p = probe_file(r.output, settings=ProbeSettings(decode=mode))
        assert p["decodable"], p["probe_error"]
        assert s["frames"] == p["probe_frames"], name
        assert s["blur"] == pytest.approx(p["blur"], rel=blur_rel), name
        if full or name not in MIXED:
            assert abs(s["motion"] - p["motion"]) <= max(motion_abs, motion_rel * p["motion"]), (name, s, p)
        assert abs(s["black_ratio"] - p["black_ratio"]) <= ratio_abs, name
        assert abs(s["frozen_ratio"] - p["frozen_ratio"]) <= ratio_abs, name
        assert s["scene_cuts"] == p["scene_cuts"], name
        if full:
            bits = [bin(int(s["phash"][i:i + 16], 16) ^ int(p["phash"][i:i + 16], 16)).count("1")
                    for i in (0, 16, 32)]
            assert max(bits) <= HASH_BITS, (name, bits)


def test_rules_give_the_same_verdicts_with_report_scores_as_with_the_decode(transcoded, tmp_path):
    d, summary = transcoded
    labels = d / "archive" / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_path", "caption", "media_type"])
        for i, r in enumerate(summary.results):
            w.writerow([r.input.split("archive/", 1)[1], korean_caption("nature", random.Random(i), 3), "video"])
    overrides = {"video_duration": {"min": 1.0}, "min_resolution": {"min": 48}}
    verdicts = {}
    for with_report in (True, False):
        store = ManifestStore(str(tmp_path / f"m{with_report}"))
        # Without scores in the report the rows still name the same clips, and every clip is decoded.
        report = summary.report if with_report else _without_scores(summary.report, tmp_path)
        ing = step_ingest(store, str(labels), transcoded=report)
        probed, stats = step_probe(store, ing.id)
        table = store.load(probed.id)
        assert all(table.column("decodable").to_pylist())
        _, rejected, report = step_filter(store, probed.id, overrides=overrides)
        rows = store.load(rejected.id).to_pylist()
        verdicts[with_report] = {r["media"]: sorted(x.split(":")[0] for x in r["reasons"]) for r in rows}
        if with_report:  # the scores are the report's, not a decode's
            got = dict(zip(table.column("transcoded").to_pylist(), table.column("blur").to_pylist()))
            assert got == {r.output: r.scores["blur"] for r in summary.results}
    assert verdicts[True] == verdicts[False]
    names = {k.rsplit("/", 1)[-1].split(".")[0]: v for k, v in verdicts[True].items()}
    assert "still_clip" in names["frozen"] and "frozen_frames" in names["frozen"]
    assert "moving" not in names and "two_cuts" not in names


def _without_scores(report: str, tmp_path) -> str:
    out = tmp_path / "report-without-scores.jsonl"
    lines = [json.loads(ln) for ln in open(report, encoding="utf-8")]
    out.write_text("".join(json.dumps({**ln, "scores": None}) + "\n" for ln in lines), encoding="utf-8")
    assert report_scores(Storage(), str(out)) == {}
    return str(out)


def test_without_scores_the_command_has_one_output(transcoded, tmp_path):
    from vidtune.platform.media import probe_video
    from vidtune.transcode.encode import encode_video

    _, summary = transcoded
    src = summary.results[0].input
    r = encode_video(src, tmp_path / "plain.mp4", PROFILE, "plain", scores=False)
    assert r.scores is None and probe_video(tmp_path / "plain.mp4").frames == summary.results[0].scores["frames"]
