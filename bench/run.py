"""`make bench`: every benchmark in one run, against one embedded object store; medians and ratios."""
from __future__ import annotations

import importlib
import json
import secrets
import sys
import tempfile
import time

from vidtune.platform.objectstore import start_weed_mini, stop_process
from vidtune.platform.storage import S3Config, Storage

BENCHES = ["transcode", "quality", "train", "evaluate", "runtime", "console", "pipeline"]


def main(names: list[str]) -> int:
    results = {}
    with tempfile.TemporaryDirectory() as d:
        proc, info = start_weed_mini(d, "bench", secrets.token_hex(12))
        try:
            storage = Storage(S3Config(endpoint=info.endpoint, access_key=info.access_key, secret_key=info.secret_key))
            bucket = "s3://bench-" + secrets.token_hex(3)
            storage.ensure_bucket(bucket)
            for name in names or BENCHES:
                try:
                    mod = importlib.import_module(f"bench.bench_{name}")
                except ModuleNotFoundError:
                    print(f"{name}: no benchmark in this installation")
                    continue
                t0 = time.perf_counter()
                results[name] = mod.main(s3=storage, bucket=bucket)
                print(f"  ({name} took {time.perf_counter() - t0:.0f} s)\n")
        finally:
            stop_process(proc.pid)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
