"""Ingest: every source format, field mapping, unknown fields, and every kind of bad input as a row reason."""
from __future__ import annotations

import json

import pytest

from vidtune.platform.errors import InvalidArgument
from vidtune.quality.ingest import MAX_CAPTION_CHARS, ingest
from vidtune.quality.manifest import ManifestStore, resolve_media
from vidtune.quality.rules import apply_rules, default_rules

from quality_testlib import caption, write_labels


def rows_by_source(table) -> dict[str, dict]:
    return {r["source"]: r for r in table.to_pylist()}


def test_csv_keeps_unknown_fields_and_infers_nothing_it_was_told(archive):
    res = ingest(str(archive / "list.csv"))
    t = res.table
    assert t.num_rows == 11 and res.root == str(archive)
    first = t.to_pylist()[0]
    assert first["id"] == "media/moving.mp4" and first["media_type"] == "video"
    assert first["caption"].startswith(caption(1)[:10]) and first["category"] == "자연/풍경"
    assert json.loads(first["extra"]) == {"source_tape": "T000"}
    assert first["ingest_error"] is None


def test_jsonl_and_json_label_dir_with_a_mapping_for_nested_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in [
        {"id": "a1", "file_path": "v/a1.mp4", "caption": caption(1), "category": "자연", "fps_hint": 25},
        {"id": "a2", "file_path": "v/a2.png", "caption": caption(2)},
    ]) + "\n\n", encoding="utf-8")
    t = ingest(str(tmp_path / "a.jsonl")).table.to_pylist()
    assert [r["id"] for r in t] == ["a1", "a2"]
    assert t[1]["media_type"] == "image"  # from the extension when the listing does not say
    assert json.loads(t[0]["extra"]) == {"fps_hint": 25}

    labels = write_labels(tmp_path, {
        "x1.json": {"meta": {"clip": "x1", "res": {"w": 1920, "h": 1080}}, "file": {"path": "m/x1.mp4"},
                    "desc": caption(3), "genre": "역사", "len_s": "12.5", "producer": "KBS"},
    })
    mapping = tmp_path / "map.yaml"
    mapping.write_text("id: meta.clip\nmedia: file.path\ncaption: desc\ncategory: genre\n"
                       "width: meta.res.w\nheight: meta.res.h\nduration: len_s\n", encoding="utf-8")
    res = ingest(str(labels), mapping=str(mapping))
    assert res.root == str(tmp_path)  # labels/ sits beside the media: the archive root is its parent
    row = res.table.to_pylist()[0]
    assert (row["id"], row["media"], row["category"]) == ("x1", "m/x1.mp4", "역사")
    assert (row["width"], row["height"], row["duration"]) == (1920.0, 1080.0, 12.5)
    assert json.loads(row["extra"]) == {"producer": "KBS"} and row["ingest_error"] is None


def test_bad_mapping_file_is_a_clear_error(tmp_path):
    labels = write_labels(tmp_path, {"a.json": {"file_path": "a.mp4", "caption": "x"}})
    bad = tmp_path / "map.yaml"
    bad.write_text("colour: c\n")
    with pytest.raises(InvalidArgument, match="unknown manifest field 'colour'"):
        ingest(str(labels), mapping=str(bad))


def test_every_bad_input_becomes_a_row_reason_never_a_crash(tmp_path):
    good = {"id": "ok", "file_path": "media/ok.mp4", "caption": caption(1), "category": "자연"}
    labels = write_labels(tmp_path, {
        "01_ok.json": good,
        "02_malformed.json": b'{"id": "m", "caption": ',
        "03_missing.json": {"id": "nocap", "file_path": "media/x.mp4"},
        "04_utf8.json": b'{"id": "u", "file_path": "a.mp4", "caption": "\xff\xfe bad"}',
        "05_nul.json": {"id": "nul", "file_path": "media/n.mp4", "caption": caption(2) + "\x00tail"},
        "06_huge.json": {"id": "huge", "file_path": "media/h.mp4", "caption": "가" * (MAX_CAPTION_CHARS * 11)},
        "07_dup.json": {**good, "caption": caption(3)},
        "08_escape.json": {"id": "esc", "file_path": "../../etc/passwd", "caption": caption(4)},
        "09_abs.json": {"id": "abs", "file_path": "/etc/passwd", "caption": caption(5)},
        "10_notobj.json": [1, 2],
        "11_badnum.json": {"id": "num", "file_path": "media/b.mp4", "caption": caption(6), "width": "wide"},
        "sub/12_type.json": {"id": "aud", "file_path": "media/a.wav", "caption": caption(7), "media_type": "audio"},
    })
    res = ingest(str(labels), root=str(tmp_path))
    rows = rows_by_source(res.table)
    assert rows["01_ok.json"]["ingest_error"] is None
    expect = {
        "02_malformed.json": "malformed JSON", "03_missing.json": "missing field: caption",
        "04_utf8.json": "invalid UTF-8", "05_nul.json": "NUL byte", "06_huge.json": "caption too large",
        "07_dup.json": "duplicate id: 'ok' already read from 01_ok.json",
        "08_escape.json": "escapes the dataset root", "09_abs.json": "outside the dataset root",
        "10_notobj.json#0": "not an object", "11_badnum.json": "bad field: width 'wide' is not a number",
        "sub/12_type.json": "bad field: media_type 'audio'",
    }
    for src, reason in expect.items():
        assert reason in (rows[src]["ingest_error"] or ""), (src, rows[src]["ingest_error"])
    assert len(rows["06_huge.json"]["caption"]) == MAX_CAPTION_CHARS
    assert "\x00" not in rows["05_nul.json"]["caption"]
    assert len(set(res.table.column("id").to_pylist())) == res.table.num_rows  # ids stay unique
    result = apply_rules(res.table, default_rules())
    assert result.report["rows_in"] == res.table.num_rows == result.clean.num_rows + result.rejected.num_rows
    rejected = {r["source"]: r["reasons"] for r in result.rejected.to_pylist()}
    for src in expect:
        assert any(r.startswith("ingest_errors: ") for r in rejected[src]), src


def test_csv_with_an_invalid_utf8_row_keeps_the_other_rows(tmp_path):
    data = ("file_path,caption,media_type\n"
            f"a.mp4,{caption(1)},video\n").encode() + b"b.mp4,\xc3\x28 broken,video\n" + \
        f"c.mp4,{caption(2)},video\n".encode()
    (tmp_path / "l.csv").write_bytes(data)
    t = ingest(str(tmp_path / "l.csv")).table.to_pylist()
    assert [r["ingest_error"] is None for r in t] == [True, False, True]
    assert "invalid UTF-8" in t[1]["ingest_error"]


def test_resolve_media_rejects_escapes_and_accepts_uris():
    assert resolve_media("s3://b/root", "a/b.mp4") == "s3://b/root/a/b.mp4"
    assert resolve_media("/data", "s3://other/x.mp4") == "s3://other/x.mp4"
    assert resolve_media("/data", "/data/x/y.mp4") == "/data/x/y.mp4"
    for bad in ("../x.mp4", "a/../../x.mp4", "/etc/passwd", "s3://b/../x", "a\x00b"):
        with pytest.raises(InvalidArgument):
            resolve_media("/data", bad)


def test_manifest_versions_record_lineage_and_never_overwrite(tmp_path, archive):
    store = ManifestStore(str(tmp_path / "m"))
    t = ingest(str(archive / "list.csv")).table
    v1 = store.save(t, "ingest", None, {"a": 1}, extra={"root": str(archive)})
    again = store.save(t.slice(0, 2), "ingest", None, {"a": 1})  # same step+params: the stored version
    assert again.id == v1.id and store.load(v1.id).num_rows == t.num_rows
    v2 = store.save(t.slice(0, 3), "split", v1.id, {"seed": 1})
    assert [r["step"] for r in store.lineage(v2.id)] == ["split", "ingest"]
    assert store.get(v2.id).record["parent"] == v1.id and store.get(v2.id).rows == 3
    assert {v.id for v in store.list()} == {v1.id, v2.id}
