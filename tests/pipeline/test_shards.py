"""Shards put back together: the split and its inverse, and generation sharded over pods (tiny real Wan model)
giving the videos and summary of one unsharded run."""
import json

import numpy as np
import pytest

from vidtune.evaluate.generate import GenerationSettings, generate_samples, merge_summaries, summary_uri
from vidtune.evaluate.tasks import merge_generate
from vidtune.pipeline import runner, stages
from vidtune.platform import kube
from vidtune.platform.errors import InvalidArgument
from vidtune.platform.shards import interleave, share


def frames(storage, uri):
    import io

    import av

    with av.open(io.BytesIO(storage.read_bytes(uri))) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.parametrize("n, count", [(0, 3), (1, 3), (7, 1), (7, 3), (10, 4), (3, 5)])
def test_interleave_undoes_share_for_any_split(n, count):
    items = [f"item-{i}" for i in range(n)]
    parts = [share(items, i, count) for i in range(count)]
    assert sorted(sum(parts, [])) == sorted(items)  # every item in exactly one shard
    assert interleave(parts) == items


def test_shards_of_different_lists_are_refused():
    with pytest.raises(InvalidArgument, match="shard 0 of 2 holds 2 items, expected 3 of 5"):
        interleave([["a", "c"], ["b", "d", "e"]])
    with pytest.raises(InvalidArgument, match=r"shard index 2 is not in \[0, 2\)"):
        share([1, 2], 2, 2)


def test_generation_over_three_gpu_pods_equals_one_run(storage, bucket):
    prompts = f"{bucket}/prompts.jsonl"
    storage.write_jsonl(prompts, [{"id": "cat", "prompt": "고양이가 소파 위에서 잠을 자고 있다", "category": "animals"},
                                  {"id": "city", "prompt": "서울 도심의 야경", "category": "city"}])
    settings = GenerationSettings(seeds=[0, 1], height=32, width=32, num_frames=5, steps=2)
    whole = generate_samples(prompts, ["base"], f"{bucket}/whole", settings, storage)
    count = 3
    shards = [generate_samples(prompts, ["base"], f"{bucket}/sharded", settings, storage, shard=(i, count))
              for i in range(count)]
    assert [s["total"] for s in shards] == [2, 1, 1] and sum(s["generated"] for s in shards) == 4
    assert not storage.exists(summary_uri(f"{bucket}/sharded"))  # shards write only their own summaries

    result = merge_generate(storage, {"output": f"{bucket}/sharded"}, count)
    merged = json.loads(storage.read_text(summary_uri(f"{bucket}/sharded")))
    rel = lambda uris, out: [u[len(out):] for u in uris]  # noqa: E731
    assert rel(merged["videos"], f"{bucket}/sharded") == rel(whole["videos"], f"{bucket}/whole")
    assert {k: merged[k] for k in ("total", "generated", "skipped", "failed", "settings", "checkpoints")} == \
           {k: whole[k] for k in ("total", "generated", "skipped", "failed", "settings", "checkpoints")}
    assert result == {"videos": f"{bucket}/sharded", "generated": 4, "skipped": 0, "failed": 0, "total": 4,
                      "failures": []}
    for a, b in zip(whole["videos"], merged["videos"]):  # each video made with the same settings
        meta = [json.loads(storage.read_text(u.removesuffix(".mp4") + ".json")) for u in (a, b)]
        for m in meta:
            del m["video"], m["seconds"]
        assert meta[0] == meta[1]
        assert frames(storage, a).shape == frames(storage, b).shape == (5, 32, 32, 3)

    # A retried pod skips what its shard already made; the merge then counts those as skipped.
    again = generate_samples(prompts, ["base"], f"{bucket}/sharded", settings, storage, shard=(0, count))
    assert (again["generated"], again["skipped"]) == (0, 2)
    assert merge_summaries(storage, f"{bucket}/sharded", count)["skipped"] == 2


def test_each_stage_shard_names_its_share_and_writes_its_own_outputs():
    by_name = {s.name: s for s in stages.STAGES}
    transcode = by_name["transcode"].fanout.shard({"inputs": ["s3://b/a"], "output": "s3://b/w/transcode",
                                                   "report": "s3://b/w/transcode/report.jsonl"}, 1, 4)
    assert (transcode["shard_index"], transcode["shard_count"]) == (1, 4)
    assert transcode["report"] == "s3://b/w/transcode/_shards/report-00001-of-00004.jsonl"
    generate = by_name["generate"].fanout.shard(by_name["generate"].on_cluster({"output": "s3://b/w/generate/videos"}),
                                                2, 4)
    assert (generate["shard_index"], generate["device"]) == (2, "cuda")  # a GPU pod uses its GPU
    pod = kube.manifest(runner.fanout_job(by_name["generate"], stages.Pipeline("l", "m", "s3://b/w", {}), "ev-1", 4,
                                          kube.ClusterSettings()))["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"  # one GPU per generation pod
    assert not by_name["quality"].fanout.wanted({"skip_probe": True})
    assert [s.name for s in stages.STAGES if s.fanout] == ["transcode", "quality", "generate"]
