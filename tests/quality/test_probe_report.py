"""Scores from a transcode report: taken only for the clip the line names, checked, and a bad value rejects
the row with its reason (never a crash); the packet scan still finds damage of the clip itself."""
from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from vidtune.platform.storage import Storage
from vidtune.quality.ingest import report_scores
from vidtune.quality.probe import FrameScorer, ProbeSettings, check_report_scores, probe_file, probe_manifest
from vidtune.transcode.encode import encode_video
from vidtune.transcode.profiles import Profile

PROFILE = Profile("test-small", 160, 96)


@pytest.fixture(scope="module")
def scored(media_dir, tmp_path_factory):
    """{name: (transcoded clip, its scores)} for a moving and a still clip."""
    d = tmp_path_factory.mktemp("report")
    out = {}
    for name in ("moving", "still"):
        r = encode_video(media_dir / f"{name}.mp4", d / f"{name}.mp4", PROFILE, name)
        out[name] = (d / f"{name}.mp4", r.scores)
    return out


def _manifest(paths) -> pa.Table:
    n = len(paths)
    return pa.table({"media": [p.name for p in paths], "media_type": ["video"] * n, "ingest_error": [None] * n})


def _write_report(tmp_path, lines) -> str:
    uri = tmp_path / "report.jsonl"
    uri.write_text("".join(json.dumps(ln) + "\n" for ln in lines), encoding="utf-8")  # NaN as JSON writes it
    return str(uri)


def _line(clip, scores, **over) -> dict:
    return {"input": f"archive/{clip.name}", "status": "ok", "output": str(clip), "scores": scores, **over}


@pytest.mark.parametrize("field,value,why", [
    ("blur", math.nan, "blur is nan, outside"), ("motion", math.inf, "motion is inf, outside"),
    ("black_ratio", 1.5, "black_ratio is 1.5, outside [0.0, 1.0]"), ("frozen_ratio", -0.1, "frozen_ratio is -0.1"),
    ("scene_cuts", "2", "scene_cuts is '2', not a number"), ("scene_cuts", 10_000, "scene_cuts is 10000, outside"),
    ("scene_cuts", 1.5, "scene_cuts is 1.5, not a number"), ("blur", True, "blur is True, not a number"),
    ("phash", "zz" * 24, "phash is 'zzzz"), ("frames", 0, "frames is 0"),
    ("blur", 10 ** 30, "blur is 1000000000000000000000000000000, outside"),  # beyond float64's integers
])
def test_a_bad_score_rejects_the_row_with_its_reason(scored, tmp_path, field, value, why):
    clip, scores = scored["moving"]
    report = report_scores(Storage(), _write_report(tmp_path, [_line(clip, {**scores, field: value})]))
    table, stats = probe_manifest(_manifest([clip]), str(clip.parent), report=report)
    row = table.to_pylist()[0]
    assert row["decodable"] is False
    assert f"bad transcode report scores for {clip}: " in row["probe_error"] and why in row["probe_error"]
    assert row["blur"] is None and stats.probed == 0


def test_scores_are_taken_for_the_clip_the_line_names_only(scored, tmp_path):
    moving, moving_scores = scored["moving"]
    still, still_scores = scored["still"]
    # A line for the still clip carrying the moving clip's scores (same frame count), and a line of
    # invented scores for a clip that is not in the manifest: neither reaches another row.
    lines = [_line(still, {**moving_scores, "motion": 0.0}), _line(moving.with_name("other.mp4"), moving_scores)]
    report = report_scores(Storage(), _write_report(tmp_path, lines))
    table, _ = probe_manifest(_manifest([moving, still]), str(moving.parent), report=report)
    rows = {r["media"]: r for r in table.to_pylist()}
    decoded = probe_file(moving)
    assert rows["moving.mp4"]["motion"] == decoded["motion"]  # no line names it: decoded
    assert rows["still.mp4"]["blur"] == moving_scores["blur"]  # its own line, whatever that line says
    # A failed line gives no scores, however it is spelled.
    failed = report_scores(Storage(), _write_report(tmp_path, [_line(still, still_scores, status="failed")]))
    assert failed == {}


def test_report_scores_of_a_different_clip_length_or_settings_fall_back_to_decoding(scored, tmp_path):
    still, scores = scored["still"]
    lines = [_line(still, {**scores, "frames": scores["frames"] + 5, "scene_cuts": 0, "blur": 1.0})]
    report = report_scores(Storage(), _write_report(tmp_path, lines))
    table, _ = probe_manifest(_manifest([still]), str(still.parent), report=report)
    assert table.to_pylist()[0]["blur"] == probe_file(still)["blur"]  # the packets disagree: decoded
    other = ProbeSettings(black_luma=30.0)
    assert check_report_scores(scores, other) == (None, None)  # other settings: not for this probe
    assert check_report_scores(scores, ProbeSettings())[0]["blur"] == scores["blur"]


def test_report_scores_come_with_the_packet_scan_facts(scored):
    moving, scores = scored["moving"]
    given, _ = check_report_scores(scores, ProbeSettings())
    row = probe_file(moving, given=given)
    assert row["decodable"] and row["probe_frames"] == scores["frames"] and row["probe_width"] == 160.0
    assert {k: row[k] for k in ("blur", "motion", "phash")} == {k: scores[k] for k in ("blur", "motion", "phash")}
    # A damaged clip is still found by reading its packets (the bytes after the first quarter overwritten).
    data = bytearray(moving.read_bytes())
    data[len(data) // 4: len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 4)
    damaged = moving.with_name("damaged.mp4")
    damaged.write_bytes(bytes(data))
    bad = probe_file(damaged, given=given)
    assert bad["decodable"] is False and "damaged.mp4" in bad["probe_error"]


def test_a_scorer_fed_nothing_gives_no_scores():
    assert FrameScorer(160, 96).result() is None


def test_a_clip_claimed_by_two_lines_takes_neither_lines_scores(scored, tmp_path):
    clip, scores = scored["moving"]
    twin = {**_line(clip, {**scores, "blur": 1.0}), "input": "archive/other.mp4",
            "output": str(clip.parent / ".." / clip.parent.name / clip.name)}  # the same clip, spelt otherwise
    assert report_scores(Storage(), _write_report(tmp_path, [_line(clip, scores), twin])) == {}


@pytest.mark.parametrize("over,why", [({"width": "abc"}, "width is abc, not a finite size"),
                                      ({"output": None}, "needs its output clip as a string"),
                                      ({"output": 5}, "needs its output clip as a string"),
                                      ({"duration": math.nan}, "duration is nan")])
def test_a_malformed_report_line_is_refused_naming_its_line(scored, tmp_path, over, why):
    from vidtune.platform.errors import InvalidArgument

    clip, scores = scored["moving"]
    uri = _write_report(tmp_path, [_line(clip, scores), _line(clip, scores, **over)])
    with pytest.raises(InvalidArgument, match=f"report.jsonl:2: .*{why}"):
        report_scores(Storage(), uri)


def test_media_the_policy_refuses_is_a_row_error_that_tells_nothing_of_the_file(scored, tmp_path):
    from vidtune.platform.access import AccessPolicy

    clip, _ = scored["moving"]
    strict = Storage(policy=AccessPolicy(allow_local=False, buckets=frozenset({"vidtune"})))
    rows = probe_manifest(_manifest([clip, clip.parent / "absent.mp4"]), str(clip.parent), strict)[0].to_pylist()
    assert [r["media_exists"] for r in rows] == [False, False]  # an existing and a missing file look the same
    assert all(r["probe_error"].startswith("bad path: ") for r in rows)
