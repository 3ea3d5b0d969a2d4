"""`make bench`: every benchmark in one run, against one embedded object store; medians and ratios.

Each benchmark runs in a process of its own (`--one NAME`), so none inherits another's threads, pools, torch
settings or heap."""
from __future__ import annotations

import importlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time

from vidtune.platform.objectstore import start_weed_mini, stop_process
from vidtune.platform.storage import S3Config, Storage

BENCHES = ["transcode", "quality", "train", "evaluate", "runtime", "console", "pipeline"]


def main(names: list[str]) -> int:
    results, failed = {}, []
    with tempfile.TemporaryDirectory() as d:
        proc, info = start_weed_mini(d, "bench", secrets.token_hex(12))
        try:
            storage = Storage(S3Config(endpoint=info.endpoint, access_key=info.access_key, secret_key=info.secret_key))
            bucket = "s3://bench-" + secrets.token_hex(3)
            storage.ensure_bucket(bucket)
            env = {**os.environ, "VIDTUNE_BENCH_ENDPOINT": info.endpoint, "VIDTUNE_BENCH_ACCESS_KEY": info.access_key,
                   "VIDTUNE_BENCH_SECRET_KEY": info.secret_key, "VIDTUNE_BENCH_BUCKET": bucket}
            for name in names or BENCHES:
                out = os.path.join(d, f"{name}.json")
                t0 = time.perf_counter()
                code = subprocess.run([sys.executable, "-m", "bench.run", "--one", name, out], env=env).returncode
                if code != 0:
                    failed.append(name)
                    print(f"{name}: FAILED (exit {code})\n")
                    continue
                with open(out) as f:
                    result = json.load(f)
                if result is not None:
                    results[name] = result
                    print(f"  ({name} took {time.perf_counter() - t0:.0f} s)\n")
        finally:
            stop_process(proc.pid)
    print(json.dumps(results, indent=2, default=str))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def one(name: str, out: str) -> int:
    """One benchmark, in this process, against the store the parent started; its result as JSON in `out`."""
    try:
        mod = importlib.import_module(f"bench.bench_{name}")
    except ModuleNotFoundError:
        print(f"{name}: no benchmark in this installation")
        result = None
    else:
        env = os.environ
        storage = Storage(S3Config(endpoint=env["VIDTUNE_BENCH_ENDPOINT"], access_key=env["VIDTUNE_BENCH_ACCESS_KEY"],
                                   secret_key=env["VIDTUNE_BENCH_SECRET_KEY"]))
        result = mod.main(s3=storage, bucket=env["VIDTUNE_BENCH_BUCKET"])
    with open(out, "w") as f:
        json.dump(result, f, default=str)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        sys.exit(one(*sys.argv[2:4]))
    sys.exit(main(sys.argv[1:]))
