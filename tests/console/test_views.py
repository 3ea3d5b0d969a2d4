"""The console's pure parts: paging and filtering rejected rows, the conclusion line, sessions and CSRF,
Submit forms built from the request descriptors, and reading training outputs from a real S3 store."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidtune.console import views
from vidtune.console.auth import FULL, READ_ONLY, Access
from vidtune.console.gateway import submit_methods

RULES = ["blur", "hangul_ratio", "video_duration"]


@pytest.fixture
def rejected(tmp_path):
    """1,000 rejected rows in row groups of 128; row i fails RULES[i % 3], and every 10th also fails blur."""
    n = 1000
    reasons = [[f"{RULES[i % 3]}: value {i}"] + (["blur: 3 < min 15"] if i % 10 == 0 and i % 3 else [])
               for i in range(n)]
    table = pa.table({"id": [f"r{i:04d}" for i in range(n)], "media": [f"clips/r{i}.mp4" for i in range(n)],
                      "caption": [f"한국어 자막 {i}" for i in range(n)], "score": [float(i) for i in range(n)],
                      "reasons": reasons})
    path = tmp_path / "rejected.parquet"
    pq.write_table(table, path, row_group_size=128)
    return path


def test_rejected_rows_page_through_row_groups(rejected):
    page = views.rejected_page(rejected, offset=500, limit=20)
    assert page["total"] == 1000 and [r["id"] for r in page["rows"]] == [f"r{i:04d}" for i in range(500, 520)]
    assert "score" not in page["rows"][0]            # only the columns the page shows are read
    assert page["rule_counts"] == {"blur": 334 + 66, "hangul_ratio": 333, "video_duration": 333}


def test_rejected_rows_filter_by_rule_and_reason(rejected):
    blur = views.rejected_page(rejected, rule="blur", limit=1000)
    ids = [int(r["id"][1:]) for r in blur["rows"]]
    assert blur["total"] == 400 and ids == sorted(ids)
    assert all(i % 3 == 0 or i % 10 == 0 for i in ids)
    both = views.rejected_page(rejected, rule="hangul_ratio", text="VALUE 1")  # case-insensitive substring
    assert all(r["reasons"][0].startswith("hangul_ratio: value 1") for r in both["rows"])
    assert both["total"] == sum(1 for i in range(1000) if i % 3 == 1 and str(i).startswith("1"))
    assert views.rejected_page(rejected, rule="no_such_rule")["total"] == 0
    last = views.rejected_page(rejected, rule="blur", offset=390, limit=50)
    assert len(last["rows"]) == 10


def test_a_table_without_reasons_is_named(tmp_path):
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "clean.parquet")
    with pytest.raises(Exception, match="clean.parquet has no `reasons` column"):
        views.rejected_page(tmp_path / "clean.parquet")


def test_media_uri_resolves_relative_paths():
    assert views.media_uri("clips/a.mp4", "s3://b/root") == "s3://b/root/clips/a.mp4"
    assert views.media_uri("s3://b/x.mp4", "s3://b/root") == "s3://b/x.mp4"


def test_conclusion_counts_the_last_checkpoint_against_the_baseline():
    report = {"baseline": "base", "checkpoints": {"base": {"grade": "C"}, "epoch-0": {"grade": "C"},
                                                  "epoch-1": {"grade": "B"}}}
    overall = [{"a": "base", "b": "epoch-1", "verdict": v} for v in ("improved", "improved", "worse", "unchanged")]
    overall.append({"a": "base", "b": "epoch-0", "verdict": "worse"})
    assert views.conclusion(report, overall) == ("epoch-1 vs base: 2 metric(s) improved, 1 worse, 1 without a "
                                                 "clear change; grade C -> B")
    assert "nothing to compare" in views.conclusion({"checkpoints": {"base": {}}}, [])


def test_sessions_roles_and_csrf():
    access = Access("full-token", "look-only")
    assert access.role_of("full-token") == FULL and access.role_of("look-only") == READ_ONLY
    assert access.role_of("wrong") is None and access.role_of("") is None
    cookie = access.new_cookie(FULL)
    s = access.session(cookie)
    assert s.can_act and s.csrf and s.csrf != access.session(access.new_cookie(FULL)).csrf
    role, nonce, sig = cookie.split(".")
    assert access.session(f"{READ_ONLY}.{nonce}.{sig}") is None          # the role cannot be edited
    assert access.session(cookie + "0") is None and access.session(None) is None
    assert Access("another-token").session(cookie) is None               # a new token ends old sessions
    assert not access.session(access.new_cookie(READ_ONLY)).can_act
    assert access.bearer_session("Bearer full-token").can_act and access.bearer_session("Bearer x") is None
    with pytest.raises(ValueError, match="must differ"):
        Access("same", "same")
    with pytest.raises(ValueError, match="needs a token"):
        Access("")


def test_submit_forms_follow_the_request_messages():
    methods = {m.name: m for m in submit_methods("quality")}
    subset = methods["SubmitSubset"]
    kinds = {f["name"]: f["kind"] for f in subset.fields()}
    assert kinds["proportions"] == "map" and kinds["balanced"] == "bool" and kinds["size"] == "int"
    req = subset.request({"store": " s3://b/m ", "size": "100", "proportions": "뉴스=0.5\nsports=0.25",
                          "balanced": "on", "seed": ""})
    assert req.store == "s3://b/m" and req.size == 100 and req.balanced and dict(req.proportions) == {
        "뉴스": 0.5, "sports": 0.25}
    with pytest.raises(ValueError, match="size: 'many' is not an integer"):
        subset.request({"size": "many"})
    train = next(m for m in submit_methods("train") if m.name == "SubmitTrain")
    req = train.request({"config_yaml": "epochs: 3\nlora_rank: 8\n", "max_steps": "5"})
    assert req.config_yaml == "epochs: 3\nlora_rank: 8\n" and req.max_steps == 5
    gen = next(m for m in submit_methods("evaluate") if m.name == "SubmitGenerate")
    assert list(gen.request({"checkpoints": "base\ns3://b/run/checkpoints/", "seeds": "0, 1"}).seeds) == [0, 1]


def test_training_outputs_from_the_store(storage, bucket):
    out = f"{bucket}/run"
    assert views.training_metrics(storage, out) == []                   # before the first flush
    storage.write_jsonl(f"{out}/metrics.jsonl", [{"step": s, "epoch": 0, "loss": 1.0 / s, "lr": 1e-3,
                                                  "step_time_s": 0.2, "samples": ["x"]} for s in (1, 2, 3)])
    points = views.training_metrics(storage, out, after=1)
    assert [p["step"] for p in points] == [2, 3] and "samples" not in points[0]
    storage.write_bytes(f"{out}/checkpoints/epoch-0.safetensors", b"0" * 10)
    storage.write_bytes(f"{out}/lora.safetensors", b"1" * 20)
    assert [(c["name"], c["bytes"]) for c in views.checkpoints(storage, out)] == [
        ("epoch-0.safetensors", 10), ("lora.safetensors", 20)]


def test_dataset_charts_from_stats():
    stats = {"overall": {"rows": 3, "media_type": {"video": 2, "image": 1}, "category": {"뉴스": 2, "스포츠": 1},
                         "class_imbalance": {"classes": 2, "gini": 0.17, "max_min_ratio": 2.0},
                         "duration": {"count": 2, "median": 5.0, "p5": 4.0, "p95": 6.0, "max": 6.0}},
             "content_words": {"top": [["뉴스", 5]]}}
    charts = views.dataset_charts(stats)
    assert charts["Categories"] == [["뉴스", 2], ["스포츠", 1]] and charts["Top words (Korean content words)"]
    facts = dict(views.dataset_facts(stats))
    assert facts["rows"] == "3" and "Gini 0.170" in facts["categories"]
    json.dumps(charts, ensure_ascii=False)


def test_training_points_carry_held_out_loss_and_samples(storage, bucket):
    from pathlib import Path

    import jinja2

    out = f"{bucket}/run-with-samples"
    sample = {"prompt_id": "dawn", "prompt": "어두운 화면이 밝아진다", "seed": 0,
              "video": f"{out}/samples/step-00000002/dawn-seed-0.mp4", "sheet": f"{out}/samples/step-00000002/dawn-seed-0.png"}
    storage.write_jsonl(f"{out}/metrics.jsonl", [
        {"step": 1, "epoch": 0, "loss": 0.5, "lr": 1e-3, "step_time_s": 0.2, "samples": ["a"]},
        {"step": 2, "epoch": 0, "loss": 0.4, "lr": 1e-3, "step_time_s": 0.2, "samples": ["b"], "val_loss": 0.45,
         "val_loss_by_timestep": {"0.250": 0.4}, "generated": [sample]}])
    points = views.training_metrics(storage, out)
    assert "val_loss" not in points[0] and "generated" not in points[0]
    assert points[1]["val_loss"] == 0.45 and points[1]["generated"] == [sample]
    assert views.training_samples(points) == [{"step": 2, "generated": [sample]}]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(views.__file__).parent / "templates"), autoescape=True)
    env.filters["file_url"] = lambda uri: "/files?uri=" + uri
    html = env.get_template("_samples.html").render(s=views.training_samples(points)[0])
    assert f'src="/files?uri={sample["video"]}"' in html and "어두운 화면이 밝아진다" in html and 'data-step="2"' in html
