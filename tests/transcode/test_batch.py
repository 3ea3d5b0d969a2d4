"""Batches over the object store: per-input results, damaged inputs, resume without repeats."""
import json

from vidtune.platform.storage import join
from vidtune.samples import make_clip, make_image
from vidtune.transcode.batch import list_inputs, output_uri, run_batch
from vidtune.transcode.profiles import get_profile

P = get_profile("wan-480p")


def upload_inputs(storage, bucket, tmp_path, n_good=3):
    for i in range(n_good):
        storage.upload(make_clip(tmp_path / f"c{i}.mp4", 320 + 64 * i, 240, 1.0), join(bucket, f"in/day{i % 2}/c{i}.mp4"))
    storage.upload(make_image(tmp_path / "still.jpg", 300, 200), join(bucket, "in/still.jpg"))
    storage.write_text(join(bucket, "in/broken.mp4"), "not a video")
    storage.write_bytes(join(bucket, "in/empty.png"), b"")
    storage.write_text(join(bucket, "in/notes.txt.bak"), "ignored: not media")


def test_batch_records_one_result_per_input_and_keeps_going(storage, bucket, tmp_path):
    upload_inputs(storage, bucket, tmp_path)
    seen = []
    summary = run_batch(storage, [join(bucket, "in/")], join(bucket, "out"), P, workers=2,
                        progress=lambda d, t, m: seen.append((d, t)))
    assert (summary.total, summary.ok, summary.failed) == (6, 4, 2)
    lines = [json.loads(ln) for ln in storage.read_text(summary.report).splitlines()]
    assert [ln["input"] for ln in lines] == [i.input for i in list_inputs(storage, [join(bucket, "in/")])]
    by_name = {ln["input"].rsplit("/", 1)[-1]: ln for ln in lines}
    assert by_name["broken.mp4"]["status"] == "failed" and "broken.mp4: not a readable video" in by_name["broken.mp4"]["reason"]
    assert by_name["empty.png"]["status"] == "failed" and "not a readable image" in by_name["empty.png"]["reason"]
    ok = [ln for ln in lines if ln["status"] == "ok"]
    for ln in ok:
        assert storage.exists(ln["output"]) and (ln["width"], ln["height"]) == (832, 480)
        assert set(ln) >= {"input", "status", "output", "reason", "duration", "fps"}
    assert by_name["c1.mp4"]["output"].startswith(join(bucket, "out/day1/c1.wan-480p-"))
    assert seen[-1] == (6, 6)


def test_rerun_skips_finished_outputs_and_writes_nothing_twice(storage, bucket, tmp_path):
    upload_inputs(storage, bucket, tmp_path, n_good=2)
    first = run_batch(storage, [join(bucket, "in/")], join(bucket, "out"), P)
    objects_before = sorted(storage.list(join(bucket, "out/")))
    second = run_batch(storage, [join(bucket, "in/")], join(bucket, "out"), P)
    assert second.skipped == first.ok == 3 and second.failed == 2
    assert sorted(storage.list(join(bucket, "out/"))) == objects_before   # same report key, no new outputs
    assert [r.output for r in second.results] == [r.output for r in first.results]


def test_output_keys_depend_on_input_and_settings(storage, bucket, tmp_path):
    from vidtune.transcode.batch import Item

    item = Item(join(bucket, "in/a.mp4"), "a.mp4")
    assert output_uri(item, "s3://o/x", P) == output_uri(item, "s3://o/x", P)
    assert output_uri(item, "s3://o/x", P) != output_uri(item, "s3://o/x", get_profile("wan-480p", fps=24))
    assert output_uri(item, "s3://o/x", P) != output_uri(Item(join(bucket, "in2/a.mp4"), "a.mp4"), "s3://o/x", P)


def test_manifest_file_and_shards(storage, bucket, tmp_path):
    upload_inputs(storage, bucket, tmp_path, n_good=3)
    storage.write_text(join(bucket, "manifest.txt"),
                       "# one per line\n" + "\n".join(join(bucket, f"in/day{i % 2}/c{i}.mp4") for i in range(3)))
    shares = [run_batch(storage, [join(bucket, "manifest.txt")], join(bucket, "out"), P, shard=(i, 2),
                        report_uri=join(bucket, f"r{i}.jsonl")) for i in range(2)]
    assert [s.total for s in shares] == [2, 1]
    assert sorted(r.input for s in shares for r in s.results) == sorted(join(bucket, f"in/day{i % 2}/c{i}.mp4") for i in range(3))
