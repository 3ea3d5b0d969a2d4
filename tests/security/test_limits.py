"""Caps on what a request can make large: refused before the work (or the decode) starts, naming the limit."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import grpc
import pytest

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.limits import Limits

AUTH = [("authorization", "Bearer test-token")]


def png_bomb(side: int) -> bytes:
    """A side x side RGB PNG of zeros: about a megabyte on disk, 3*side^2 bytes once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, body = zlib.compressobj(9), b"\x00" * (1 + 3 * side), []
    for _ in range(side):
        body.append(z.compress(row))
    body.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))


_DECODE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({ceiling}, {ceiling}))
data = open(sys.argv[1], "rb").read()
try:
    if sys.argv[2] == "checked":
        from vidtune.platform.media import check_image_pixels
        check_image_pixels(data, "bomb.png")
    import io
    from PIL import Image
    Image.open(io.BytesIO(data)).convert("RGB")
    print("decoded")
except MemoryError:
    print("MemoryError")
except Exception as e:
    print(type(e).__name__, e)
# The peak resident size of this process image (VmHWM; ru_maxrss would carry the parent's over exec).
print("maxrss_kib", next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def _decode_under_ceiling(path, mode: str, ceiling: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _DECODE.format(ceiling=ceiling), str(path), mode],
                         capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("maxrss_kib"), out.stderr[-2000:]
    return "\n".join(lines[:-1]), int(lines[-1].split()[1])


def test_png_bomb_is_refused_before_decoding_under_a_memory_ceiling(tmp_path):
    side = 12_000  # 144 M pixels: under Pillow's own bomb check (2 x 89 M), 432 MB once decoded
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(side))
    assert bomb.stat().st_size < 1_000_000
    ceiling = 400 * 1024 * 1024
    # Without the check the same decode cannot stay under the ceiling: the cap is what keeps it there.
    unchecked, _ = _decode_under_ceiling(bomb, "plain", ceiling)
    assert unchecked != "decoded"
    checked, maxrss_kib = _decode_under_ceiling(bomb, "checked", ceiling)
    assert checked.startswith("InvalidArgument") and "VIDTUNE_MAX_PIXELS" in checked
    assert f"{side}x{side}" in checked and "refused before decoding" in checked
    assert maxrss_kib * 1024 < 200 * 1024 * 1024, maxrss_kib


def test_a_container_header_understating_the_frame_size_does_not_pass_the_pixel_limit(tmp_path, monkeypatch):
    """The facts are read without decoding, from the container's stated size; a header that says 64x64 over
    1280x720 frames is caught at the first frame, before the probe or ffmpeg decode any more of it."""
    from vidtune.platform.media import probe_video
    from vidtune.quality.probe import probe_file
    from vidtune.samples import make_clip

    clip = make_clip(tmp_path / "real.mp4", 1280, 720, 1.0, fps=5)
    data = bytearray(clip.read_bytes())
    entry = data.find(b"avc1", data.find(b"stsd"))
    struct.pack_into(">HH", data, entry + 28, 64, 64)          # the sample entry's width and height
    header = data.find(b"tkhd")
    struct.pack_into(">II", data, header + 80, 64 << 16, 64 << 16)  # the track's display size (16.16)
    liar = tmp_path / "liar.mp4"
    liar.write_bytes(bytes(data))
    assert (probe_video(liar).width, probe_video(liar).height) == (1280, 720)  # the frames' size, not the header's
    monkeypatch.setenv("VIDTUNE_MAX_PIXELS", "100000")
    with pytest.raises(InvalidArgument, match=r"liar.mp4 \(its frames; the container states 64x64\): 1280x720 = "
                                              r"921600 pixels exceeds the limit 100000.*refused after its first frame"):
        probe_video(liar)
    row = probe_file(liar)
    assert not row["decodable"] and "the container states 64x64" in row["probe_error"]


def test_limits_name_the_setting(monkeypatch):
    monkeypatch.setenv("VIDTUNE_MAX_WORKERS", "4")
    limits = Limits.from_env()
    assert limits.check("max_workers", 4, "workers") == 4
    with pytest.raises(InvalidArgument, match=r"workers=2147483647 exceeds the limit 4 \(VIDTUNE_MAX_WORKERS\)"):
        limits.check("max_workers", 2**31 - 1, "workers")
    with pytest.raises(InvalidArgument, match="VIDTUNE_MAX_GEN_PIXELS"):
        limits.check_generation(4096, 4096, 17, 4, 1)
    with pytest.raises(InvalidArgument, match="steps=100000 exceeds the limit 100 .VIDTUNE_MAX_GEN_STEPS"):
        limits.check_generation(64, 64, 17, 100_000, 1)
    monkeypatch.setenv("VIDTUNE_MAX_WORKERS", "many")
    with pytest.raises(InvalidArgument, match="VIDTUNE_MAX_WORKERS='many' is not a whole number"):
        Limits.from_env()


def test_services_refuse_oversized_requests_at_submit(serve, storage, bucket, jobs_root):
    from vidtune.evaluate.service import definition as evaluate
    from vidtune.transcode.service import definition as transcode
    from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc, transcode_pb2, transcode_pb2_grpc

    _, tc = serve(transcode(storage))
    _, ev = serve(evaluate(storage))
    attempts = [
        (tc, lambda ch: transcode_pb2_grpc.TranscodeServiceStub(ch).SubmitTranscode(transcode_pb2.TranscodeRequest(
            inputs=[f"{bucket}/in/"], output=f"{bucket}/out", workers=2**31 - 1), metadata=AUTH), "VIDTUNE_MAX_WORKERS"),
        (ev, lambda ch: evaluate_pb2_grpc.EvaluateServiceStub(ch).SubmitGenerate(evaluate_pb2.GenerateRequest(
            prompts=f"{bucket}/p.jsonl", checkpoints=["base"], output=f"{bucket}/v", height=4096, width=4096),
            metadata=AUTH), "VIDTUNE_MAX_GEN_PIXELS"),
        (ev, lambda ch: evaluate_pb2_grpc.EvaluateServiceStub(ch).SubmitGenerate(evaluate_pb2.GenerateRequest(
            prompts=f"{bucket}/p.jsonl", checkpoints=["base"], output=f"{bucket}/v", seeds=list(range(1000))),
            metadata=AUTH), "VIDTUNE_MAX_GEN_SEEDS"),
    ]
    for address, call, words in attempts:
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as e:
            call(ch)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()
    # Request size: gRPC's own receive limit (4 MiB) answers before any vidtune code runs.
    with grpc.insecure_channel(tc) as ch, pytest.raises(grpc.RpcError) as e:
        transcode_pb2_grpc.TranscodeServiceStub(ch).SubmitTranscode(transcode_pb2.TranscodeRequest(
            inputs=[f"{bucket}/in/{'x' * 1000}-{i}.mp4" for i in range(5000)], output=f"{bucket}/out"), metadata=AUTH)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in e.value.details()


def test_concurrent_jobs_are_capped_per_service_and_per_backend(serve, storage, bucket, jobs_root, monkeypatch,
                                                                tmp_path):
    from vidtune.platform.limits import ResourceExhausted
    from vidtune.transcode.service import definition
    from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, transcode_pb2, transcode_pb2_grpc

    busy = [{"backend": "local"}, {"backend": "local"}]
    with pytest.raises(ResourceExhausted, match=r"2 train jobs on the local backend .* limit is 2 .VIDTUNE_MAX_LOCAL_JOBS"):
        Limits().admit(busy, "local", "train")
    Limits().admit(busy, "inprocess", "train")  # the other backends still have room

    import numpy as np

    from vidtune.evaluate.videoio import write_mp4

    frames = np.random.default_rng(0).integers(0, 255, (48, 256, 256, 3), dtype=np.uint8)
    storage.upload(write_mp4(frames, tmp_path / "a.mp4"), f"{bucket}/in/a.mp4")  # a job that takes a while
    monkeypatch.setenv("VIDTUNE_MAX_ACTIVE_JOBS", "1")
    _, address = serve(definition(storage))
    request = transcode_pb2.TranscodeRequest(inputs=[f"{bucket}/in/a.mp4"], output=f"{bucket}/out")
    with grpc.insecure_channel(address) as ch:
        stub, jobs = transcode_pb2_grpc.TranscodeServiceStub(ch), jobs_pb2_grpc.JobServiceStub(ch)
        first = stub.SubmitTranscode(request, metadata=AUTH)
        with pytest.raises(grpc.RpcError) as e:
            stub.SubmitTranscode(request, metadata=AUTH)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "VIDTUNE_MAX_ACTIVE_JOBS" in e.value.details()
        for job in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=first.id), metadata=AUTH, timeout=60):
            pass
        assert job.state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED)
        stub.SubmitTranscode(request, metadata=AUTH)  # the finished job freed its slot
