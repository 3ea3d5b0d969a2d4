"""Console page load times with a 200,000-row manifest in the store.

A generated 200,000-row archive manifest (bench_quality's generator: Korean captions, sizes, durations) goes
through the real features + default rules + statistics; the store then holds clean.parquet, report.json,
stats.json and a rejected.parquet of all 200,000 rows (each row keeps the reasons the rules gave it, and rows
the rules passed carry a `bench_rule` reason, so the rejected table is as large as the manifest). The console
is served by uvicorn on loopback and each page is fetched over HTTP with a session cookie; figures are medians
of `repeats` fetches (the first fetch of the quality page, which copies the Parquet file from the store once,
is reported apart). Baseline: reading every row of the rejected table into Python objects, which is what a
page listing all rows would have to do before rendering a byte of HTML.

Run: `python -m bench.run console` (with an embedded object store), or `python -m bench.bench_console`.
"""
from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import threading
import time
import urllib.parse
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq

from vidtune.platform.storage import Storage, join

TOKEN = "bench-console-token"


def build_store(storage: Storage, root: str, rows: int) -> dict:
    from bench.bench_quality import generate_manifest
    from vidtune.quality.features import with_features
    from vidtune.quality.rules import apply_rules, default_rules
    from vidtune.quality.stats import compute_stats

    t0 = time.perf_counter()
    table = with_features(generate_manifest(rows))
    res = apply_rules(table, default_rules())
    stats = compute_stats(res.clean)
    reasons_by_id = dict(zip(res.rejected.column("id").to_pylist(), res.rejected.column("reasons").to_pylist()))
    reasons = [reasons_by_id.get(i) or ["bench_rule: kept by the rules, listed to fill the table"]
               for i in table.column("id").to_pylist()]
    rejected = table.append_column("reasons", pa.array(reasons, pa.list_(pa.string())))
    for name, t in (("rejected.parquet", rejected), ("clean.parquet", res.clean)):
        buf = io.BytesIO()
        pq.write_table(t, buf, row_group_size=16_384)
        storage.write_bytes(join(root, name), buf.getvalue())
    report = dict(res.report, lineage=[])
    storage.write_text(join(root, "report.json"), json.dumps(report, ensure_ascii=False, default=str))
    storage.write_text(join(root, "stats.json"), json.dumps(stats, ensure_ascii=False, default=str))
    return {"rows": rows, "rejected_by_rules": res.report["rejected"], "rejected_parquet_mb":
            round(storage.size(join(root, "rejected.parquet")) / 1e6, 1), "build_s": round(time.perf_counter() - t0, 1)}


def serve(storage: Storage, bucket: str):
    import uvicorn

    from vidtune.console.app import create_app
    from vidtune.console.auth import Access
    from vidtune.console.gateway import Gateway

    app = create_app(gateway=Gateway(services=[]), storage=storage, access=Access(TOKEN),
                     buckets=[bucket.removeprefix("s3://")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def fetch(opener, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with opener.open(url, timeout=120) as r:
        body = r.read()
        assert r.status == 200, (url, r.status)
    return time.perf_counter() - t0, len(body)


def main(s3: Storage | None = None, bucket: str | None = None, rows: int = 200_000, repeats: int = 5) -> dict:
    storage = s3 or Storage()
    bucket = bucket or "s3://vidtune"
    root = join(bucket, "bench-console", "quality")
    built = build_store(storage, root, rows)
    print(f"console: store holds {rows:,} rows ({built['rejected_by_rules']:,} rejected by the default rules), "
          f"rejected.parquet {built['rejected_parquet_mb']} MB, built in {built['build_s']} s")
    server, base = serve(storage, bucket)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor())
    opener.open(base + "/login", data=urllib.parse.urlencode({"token": TOKEN}).encode(), timeout=30)
    out = urllib.parse.quote(root, safe="")
    pages = {
        "quality, first page": f"/quality?out={out}",
        "quality, page 3,000 (offset 150,000)": f"/quality?out={out}&offset=150000",
        "quality, filtered by rule": f"/quality?out={out}&rule=video_duration&offset=1000",
        "quality, reason substring": f"/quality?out={out}&q=max%2045",
        "dataset statistics": f"/dataset?out={out}",
        "overview": "/",
    }
    results = {"store": built}
    try:
        first, size = fetch(opener, base + pages["quality, first page"])
        results["quality, first fetch (copies the Parquet once)"] = {"seconds": round(first, 3), "bytes": size}
        for name, path in pages.items():
            times, size = [], 0
            for _ in range(repeats):
                dt, size = fetch(opener, base + path)
                times.append(dt)
            results[name] = {"median_s": round(statistics.median(times), 4), "bytes": size}
        times = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            with storage.local_copy(join(root, "rejected.parquet")) as p:
                pq.read_table(p).to_pylist()
            times.append(time.perf_counter() - t0)
        baseline = statistics.median(times)
        results["baseline: every rejected row into Python"] = {"median_s": round(baseline, 3)}
        for name in pages:
            results[name]["x_faster_than_baseline"] = round(baseline / results[name]["median_s"], 1)
    finally:
        server.should_exit = True
    for name, r in results.items():
        if name != "store":
            print(f"  {name:48s} {json.dumps(r)}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(json.dumps(main(rows=a.rows, repeats=a.repeats), indent=2))
