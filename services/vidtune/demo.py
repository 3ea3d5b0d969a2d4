"""`make demo`: the whole pipeline on a generated archive, through the real services on this machine.

Starts a private stack (embedded object store + the gRPC services on free loopback ports), makes a small
broadcaster-style archive (Korean captions, several sizes, stills, damaged files), and runs each stage as
a job of its service, watched with a progress bar. Everything lands under ./demo-out and in the stack's
object store; the stack is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vidtune.platform import stack
from vidtune.platform.client import ServiceClient, watch
from vidtune.platform.objectstore import free_ports
from vidtune.platform.storage import S3Config, Storage, join
from vidtune.samples import make_archive

BUCKET = "s3://vidtune"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def follow(client: ServiceClient, job) -> dict:
    from vidtune.platform.client import job_dict

    final = watch(client, job.id)
    rec = job_dict(final)
    if rec["state"] != "SUCCEEDED":
        raise SystemExit(f"job {rec['id']} ended {rec['state']}: {rec.get('error', {}).get('message', '')}")
    return rec


def transcode_stage(storage: Storage, archive_uri: str) -> dict:
    from vidtune.v1 import transcode_pb2, transcode_pb2_grpc

    say("transcode: archive -> 1280x720 clips and stills (a job of the transcode service)")
    with ServiceClient("transcode") as c:
        job = c.stub(transcode_pb2_grpc.TranscodeServiceStub).SubmitTranscode(transcode_pb2.TranscodeRequest(
            inputs=[join(archive_uri, "media/")], output=join(BUCKET, "transcoded/wan-720p"), profile="wan-720p",
            workers=2), metadata=c.metadata, timeout=30)
        rec = follow(c, job)
    result = rec["result"]
    lines = [json.loads(x) for x in storage.read_text(result["report"]).splitlines()]
    print(f"{int(result['ok'])} ok, {int(result['failed'])} rejected of {int(result['total'])}; "
          f"report {result['report']}")
    for ln in lines:
        if ln["status"] == "ok":
            timing = f" {ln['duration']:.1f}s {ln['fps']:g}fps" if ln["media_type"] == "video" else " still"
            print(f"  ok       {ln['input'].rsplit('/', 1)[-1]:14s} -> {ln['output'].rsplit('/', 1)[-1]} "
                  f"{ln['width']}x{ln['height']}{timing}")
        else:
            print(f"  rejected {ln['input'].rsplit('/', 1)[-1]:14s} {ln['reason']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidtune-demo", description=__doc__)
    parser.add_argument("--out", default="demo-out", help="local directory for the archive and reports")
    parser.add_argument("--keep-running", action="store_true", help="leave the demo stack running at the end")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    home = out / "stack"
    os.environ["VIDTUNE_HOME"] = str(home)   # the demo's own stack, apart from a developer's `vidtune up`
    t0 = time.monotonic()

    say("starting the local stack: SeaweedFS object store + services on loopback")
    stack.down(home)  # a previous demo interrupted mid-way
    state = stack.up(home=home, base_port=free_ports(1)[0] if _defaults_taken() else None)
    os.environ.update(state["s3"])
    for svc, port in state["ports"].items():
        print(f"  {svc:10s} 127.0.0.1:{port}")
    try:
        storage = Storage(S3Config.from_env())
        say("making a sample archive (Korean captions, 1080p/720p/portrait/10-bit clips, stills, damaged files)")
        items = make_archive(out / "archive", scale=0.5)
        archive_uri = join(BUCKET, "archive")
        for path in sorted((out / "archive").rglob("*")):
            if path.is_file():
                storage.upload(path, join(archive_uri, str(path.relative_to(out / "archive"))))
        print(f"  {len(items)} items ({sum(i.damaged for i in items)} damaged) uploaded to {archive_uri}/")
        transcode_stage(storage, archive_uri)
    finally:
        if not args.keep_running:
            say("stopping the stack")
            print("  stopped: " + ", ".join(stack.down(home)))
    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s; files under {out}")
    return 0


def _defaults_taken() -> bool:
    from vidtune.platform.server import DEFAULT_PORTS

    return not all(stack._port_free(p) for p in DEFAULT_PORTS.values())


if __name__ == "__main__":
    sys.exit(main())
