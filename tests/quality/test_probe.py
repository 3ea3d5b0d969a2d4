"""Probe: facts, decode checks and scores on real clips; corrupt files; the per-item cache; S3 media."""
from __future__ import annotations

import hashlib
import os
import shutil

import pyarrow as pa
import pytest

from vidtune.quality.probe import ProbeSettings, probe_file, probe_manifest


def bits(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def test_facts_of_a_good_clip(media_dir):
    r = probe_file(media_dir / "moving.mp4")
    assert r["decodable"] is True and r["probe_error"] is None and r["media_exists"] is True
    assert (r["probe_width"], r["probe_height"], r["probe_fps"], r["probe_frames"]) == (160, 96, 10, 20)
    assert r["probe_duration"] == pytest.approx(2.0, abs=0.05)
    assert r["probe_codec"] == "h264" and r["probe_pix_fmt"] == "yuv420p" and r["probe_audio"] is False
    assert "mp4" in r["probe_container"] and r["probe_rotation"] == 0
    assert r["sha256"] == hashlib.sha256((media_dir / "moving.mp4").read_bytes()).hexdigest()
    assert r["file_size"] == os.path.getsize(media_dir / "moving.mp4") and len(r["phash"]) == 48
    assert probe_file(media_dir / "with_audio.mp4")["probe_audio"] is True


def test_scores_separate_still_black_blurry_and_cut_clips(media_dir):
    moving, still, black = (probe_file(media_dir / f) for f in ("moving.mp4", "still.mp4", "black.mp4"))
    blurry, cuts = probe_file(media_dir / "blurry.mp4"), probe_file(media_dir / "cuts.mp4")
    assert moving["motion"] > 0.5 and still["motion"] < 0.01
    assert still["frozen_ratio"] == 1.0 and moving["frozen_ratio"] == 0.0
    assert black["black_ratio"] == 1.0 and moving["black_ratio"] == 0.0 and still["black_ratio"] == 0.0
    assert blurry["blur"] < 15 < 1000 < moving["blur"]
    assert cuts["scene_cuts"] == 2 and moving["scene_cuts"] == 0


def test_perceptual_hash_finds_re_encodes_not_other_content(media_dir):
    a, b, c = (probe_file(media_dir / f)["phash"] for f in ("moving.mp4", "rescaled.mp4", "mandel.mp4"))
    assert bits(a, b) <= 8 < 40 < bits(a, c)


@pytest.mark.parametrize("name,reason", [("truncated.mp4", "undecodable"), ("not_video.mp4", "undecodable"),
                                         ("empty.mp4", "empty file"), ("missing.mp4", "missing file")])
def test_corrupt_files_get_a_reason_never_an_exception(media_dir, name, reason):
    r = probe_file(media_dir / name)
    assert r["decodable"] is False and reason in r["probe_error"] and name in r["probe_error"]


def test_stream_that_ends_early_is_not_decodable(media_dir, tmp_path):
    # Cut the data in the middle but keep the header (moov atom first): the end does not decode.
    src = tmp_path / "faststart.mp4"
    from vidtune.samples import ffmpeg_run

    ffmpeg_run(["-i", str(media_dir / "moving.mp4"), "-c", "copy", "-movflags", "+faststart", str(src)])
    data = src.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    r = probe_file(tmp_path / "cut.mp4")
    assert r["decodable"] is False and "cut.mp4" in r["probe_error"]


def test_image_and_metadata_only_mode(media_dir):
    img = probe_file(media_dir / "still.png", "image")
    assert img["decodable"] and (img["probe_width"], img["probe_height"]) == (160, 120) and img["blur"] > 0
    meta = probe_file(media_dir / "moving.mp4", settings=ProbeSettings(scores=False))
    assert meta["decodable"] and meta["motion"] is None and meta["blur"] is None and len(meta["phash"]) == 48
    assert probe_file(media_dir / "truncated.mp4", settings=ProbeSettings(scores=False))["decodable"] is False


def listing(*medias: str) -> pa.Table:
    return pa.Table.from_pylist([{"id": m, "media": m, "media_type": "image" if m.endswith(".png") else "video",
                                  "ingest_error": None} for m in medias])


def test_manifest_probe_is_cached_and_resumable(media_dir, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(media_dir, root)
    t = listing("moving.mp4", "still.png", "truncated.mp4", "nope.mp4", "../escape.mp4")
    cache = str(tmp_path / "cache")
    probed, stats = probe_manifest(t, str(root), cache_root=cache)
    assert (stats.probed, stats.cached) == (3, 0) and stats.failed == 3
    assert probed.column("decodable").to_pylist() == [True, True, False, False, False]
    errors = probed.column("probe_error").to_pylist()
    assert "missing file" in errors[3] and "bad path" in errors[4]
    again, stats2 = probe_manifest(t, str(root), cache_root=cache)
    assert (stats2.probed, stats2.cached) == (0, 3)
    assert again.column("sha256").to_pylist() == probed.column("sha256").to_pylist()
    shutil.copyfile(media_dir / "mandel.mp4", root / "moving.mp4")  # content changed: probed again
    third, stats3 = probe_manifest(t, str(root), cache_root=cache)
    assert (stats3.probed, stats3.cached) == (1, 2)
    assert third.column("sha256").to_pylist()[0] != probed.column("sha256").to_pylist()[0]


def test_probe_media_in_the_object_store(storage, bucket, media_dir):
    root = f"{bucket}/archive"
    storage.upload(media_dir / "moving.mp4", f"{root}/a.mp4")
    storage.write_text(f"{root}/bad.mp4", "garbage")
    t = listing("a.mp4", "bad.mp4", "gone.mp4")
    probed, stats = probe_manifest(t, root, storage, cache_root=f"{bucket}/cache")
    assert probed.column("decodable").to_pylist() == [True, False, False] and stats.probed == 2
    assert f"{root}/bad.mp4" in probed.column("probe_error").to_pylist()[1]
    _, stats2 = probe_manifest(t, root, storage, cache_root=f"{bucket}/cache")
    assert stats2.cached == 2 and stats2.probed == 0   # keyed by URI + etag


def test_a_probe_stopped_midway_resumes_from_its_cache(media_dir, tmp_path):
    from vidtune.platform.errors import JobCancelled

    root = tmp_path / "root"
    shutil.copytree(media_dir, root)
    t = listing("moving.mp4", "mandel.mp4", "still.mp4", "blurry.mp4")
    cache = str(tmp_path / "cache")
    calls = []

    def stop_after_two():  # asked before each item: the job is stopped once two items are done
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(JobCancelled):
        probe_manifest(t, str(root), cache_root=cache, workers=1, cancelled=stop_after_two)
    again, stats = probe_manifest(t, str(root), cache_root=cache, workers=1)
    assert (stats.cached, stats.probed) == (2, 2)          # nothing done twice, nothing lost
    assert all(again.column("decodable").to_pylist())


def test_rotation_is_read_and_sizes_are_as_displayed(tmp_path):
    from vidtune.samples import make_rotated_clip

    row = probe_file(make_rotated_clip(tmp_path / "phone.mp4", 320, 240, rotation=90))
    assert row["probe_rotation"] == 90 and (row["probe_width"], row["probe_height"]) == (240, 320)
