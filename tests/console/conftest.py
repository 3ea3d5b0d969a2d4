"""The console against a real local stack (`vidtune up`: SeaweedFS + the four gRPC services + the console)
and a real headless Debian Chromium driven by Selenium through chromium-driver."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import grpc
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server",
                  "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required")
READ_ONLY_TOKEN = "console-read-only-token"
BUCKET = "s3://vidtune"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A private `vidtune up` (its own home, free ports); yields its state with `console` (the URL)."""
    from vidtune.platform import stack as local_stack
    from vidtune.platform.objectstore import free_ports

    home = tmp_path_factory.mktemp("console-stack")
    saved = dict(os.environ)
    os.environ["VIDTUNE_CONSOLE_READONLY_TOKEN"] = READ_ONLY_TOKEN
    os.environ["VIDTUNE_HOME"] = str(home)
    for k in list(os.environ):
        if "proxy" in k.lower():
            del os.environ[k]
    state = local_stack.up(home=home, base_port=free_ports(1)[0] + 100)
    os.environ.update(state["s3"])
    try:
        yield state
    finally:
        local_stack.down(home)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def store(stack):
    from vidtune.platform.storage import S3Config, Storage

    return Storage(S3Config.from_env(stack["s3"]))


@pytest.fixture(scope="session")
def rpc(stack):
    """(channel factory, call metadata) for the stack's services."""
    channels = {}

    def channel(service: str):
        if service not in channels:
            channels[service] = grpc.insecure_channel(f"127.0.0.1:{stack['ports'][service]}")
        return channels[service]

    yield channel, [("authorization", f"Bearer {stack['token']}")]
    for ch in channels.values():
        ch.close()


@pytest.fixture(scope="session")
def read_only_token() -> str:
    return READ_ONLY_TOKEN


@pytest.fixture(scope="session")
def job_waiter(rpc):
    """wait(service, job_id, timeout=..., states=...) -> the Job once it is in one of `states`."""
    return lambda *a, **kw: wait_job(rpc, *a, **kw)


def wait_job(rpc, service: str, job_id: str, timeout: float = 300, states=("SUCCEEDED", "FAILED", "CANCELLED")):
    from vidtune.v1 import jobs_pb2, jobs_pb2_grpc

    channel, meta = rpc
    stub = jobs_pb2_grpc.JobServiceStub(channel(service))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = stub.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=meta, timeout=30)
        except grpc.RpcError as e:  # a service busy with in-process work may answer late
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            continue
        if jobs_pb2.JobState.Name(job.state) in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"{service} job {job_id} did not reach {states} in {timeout:.0f} s")


@pytest.fixture(scope="session")
def train_dataset(store, tmp_path_factory) -> str:
    """Tiny clips with Korean prompts in the training layout, uploaded to the stack's store."""
    from makedata import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("train-data"), n=4)
    uri = f"{BUCKET}/tests/dataset"
    for p in root.rglob("*"):
        if p.is_file():
            store.upload(p, f"{uri}/{p.relative_to(root)}")
    return uri


@pytest.fixture(scope="session")
def quality_run(store, rpc, tmp_path_factory) -> str:
    """A real quality job over a listing of small clips (Korean captions) and two damaged files."""
    from makedata import make_dataset

    from vidtune.v1 import quality_pb2, quality_pb2_grpc

    root = make_dataset(tmp_path_factory.mktemp("quality-data"), n=6, corrupt=2)
    media = f"{BUCKET}/tests/quality-media"
    listing = []
    for i, p in enumerate(sorted((root / "media").iterdir())):
        store.upload(p, f"{media}/{p.name}")
        listing.append({"id": f"item-{i}", "file_path": f"{media}/{p.name}", "media_type": "video",
                        "caption": ["바다 위로 해가 뜬다", "서울 도심의 야경", "a red square moves right",
                                    "산길을 걷는 사람들", "뉴스 스튜디오의 앵커", "강아지가 공을 쫓는다"][i % 6],
                        "category": ["자연", "도시", "test", "자연", "뉴스", "동물"][i % 6]})
    store.write_jsonl(f"{BUCKET}/tests/quality-listing.jsonl", listing)
    # Rules sized for these tiny clips: unreadable media and non-Korean captions are what gets rejected.
    rules = f"{BUCKET}/tests/quality-rules.yaml"
    store.write_text(rules, "rules:\n  - {name: ingest_errors, type: ingest}\n  - {name: media_readable, type: probe_ok}\n"
                            "  - {name: hangul_ratio, type: range, field: hangul_ratio, min: 0.5}\n"
                            "  - {name: min_resolution, type: range, field: short_side, min: 48}\n")
    out = f"{BUCKET}/tests/quality"
    channel, meta = rpc
    job = quality_pb2_grpc.QualityServiceStub(channel("quality")).SubmitRun(quality_pb2.RunQualityRequest(
        source=f"{BUCKET}/tests/quality-listing.jsonl", output=out, root=media, rules=rules, workers=1, skip_export=True),
        metadata=meta, timeout=30)
    done = wait_job(rpc, "quality", job.id)
    assert done.state == 3, done.error.message
    return out


@pytest.fixture(scope="session")
def evaluation_run(store, rpc, tmp_path_factory) -> str:
    """H.264 clips for base and two epochs (textured patterns), scored with a tiny CLIP, then compared:
    the evaluate service's real score and compare jobs. Returns the compare job id."""
    from eval_clips import textured_clip

    from vidtune.evaluate.demo import prepare_tiny_metric_models
    from vidtune.evaluate.videoio import write_mp4
    from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

    root = f"{BUCKET}/tests/eval"
    clip_uri, _ = prepare_tiny_metric_models(root, store)
    local = tmp_path_factory.mktemp("eval-videos")
    prompts = {"p0": ("바닷가의 일출", "자연"), "p1": ("도시의 밤거리", "도시")}
    for k, ck in enumerate(("base", "epoch-0", "epoch-1")):
        for pid, (prompt, cat) in prompts.items():
            for seed in (0, 1):
                path = write_mp4(textured_clip(t=17, h=48, w=64, seed=seed + 10 * k + (3 if pid == "p1" else 0)),
                                 local / f"{ck}-{pid}-{seed}.mp4")
                uri = f"{root}/videos/{ck}/{pid}/seed-{seed}.mp4"
                store.upload(path, uri)
                store.write_text(uri.removesuffix(".mp4") + ".json", json.dumps(
                    {"checkpoint": ck, "prompt_id": pid, "prompt": prompt, "category": cat, "seed": seed},
                    ensure_ascii=False))
    channel, meta = rpc
    ev = evaluate_pb2_grpc.EvaluateServiceStub(channel("evaluate"))
    job = ev.SubmitScore(evaluate_pb2.ScoreRequest(videos=f"{root}/videos/", output=f"{root}/scores",
                                                   clip_weights=clip_uri), metadata=meta, timeout=30)
    assert wait_job(rpc, "evaluate", job.id).state == 3
    job = ev.SubmitCompare(evaluate_pb2.CompareRequest(scores=[f"{root}/scores"], output=f"{root}/report",
                                                       no_contact_sheets=True), metadata=meta, timeout=30)
    done = wait_job(rpc, "evaluate", job.id)
    assert done.state == 3, done.error.message
    return job.id


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """Debian's headless Chromium with a fresh profile, through Debian's chromium-driver."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Debian chromium and chromium-driver are needed: `make system-deps` installs them (as root)")
    from selenium import webdriver

    os.environ["SE_OFFLINE"] = "true"   # never let Selenium Manager look for a browser or driver online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
