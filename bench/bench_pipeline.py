"""Pipeline overhead: `vidtune pipeline run --until export` against the same stage jobs run by hand.

Both sides run the transcode, quality and export jobs through the services' handlers in this process, with
identical specs, on a fresh work directory per repeat (a generated archive: 1920x1080, portrait, odd-sized
clips, a still and a damaged file). The pipeline adds its stage-state files and spec digests; the ratio of
wall-clock medians is its cost (goal: <= 1.05). Because the stages' own run-to-run spread is larger than that
cost, the time the pipeline spends outside the stage jobs is also measured directly.

Run: `make bench` (all benchmarks) or `python -m bench.bench_pipeline [--repeats R] [--seconds S]`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vidtune.platform.jobs import new_record, run_in_process
from vidtune.platform.storage import Storage
from vidtune.pipeline import runner, stages
from vidtune.registry import module

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "pipeline"))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "quality"))
from pipeline_testlib import RULES, make_tiny_archive  # noqa: E402

UNTIL = "export"


def pipeline_of(archive: Path, work: Path, rules: Path) -> stages.Pipeline:
    text = stages.render_yaml(str(archive / "labels"), str(archive), str(work))
    p = stages.parse(text)
    p.settings["quality"]["rules"] = str(rules)
    p.settings["transcode"]["profile"] = "wan-480p"
    return p


def by_hand(p: stages.Pipeline, storage: Storage, scratch: Path) -> None:
    """Each stage's job run directly, the next one given what the previous one returned."""
    results: dict[str, dict] = {}
    for stage in stages.stages_until(UNTIL):
        record = new_record(stage.service, stage.kind, stage.spec(p, results))
        handler = module(stage.service, "tasks").HANDLERS[stage.kind]
        results[stage.name] = {**run_in_process(record, handler, storage, scratch), **record["result"]}


class TimedInProcess(runner.InProcess):
    """Sums the time spent inside the stage jobs, so the rest is what the pipeline itself costs."""

    inside = 0.0

    def run(self, *args):
        t0 = time.perf_counter()
        try:
            return super().run(*args)
        finally:
            TimedInProcess.inside += time.perf_counter() - t0


def through_pipeline(p: stages.Pipeline, storage: Storage, scratch: Path) -> None:
    runner.run(p, TimedInProcess(storage), storage, UNTIL, log=lambda m: None)


def main(s3: Storage | None = None, bucket: str | None = None, repeats: int = 5, seconds: float = 1.0) -> dict:
    storage = Storage()  # local paths: the object store's latency is the stages' cost, not the pipeline's
    with tempfile.TemporaryDirectory(prefix="vt-bench-pipeline-") as d:
        root = Path(d)
        archive = make_tiny_archive(root / "archive", seconds=seconds)
        rules = root / "rules.yaml"
        rules.write_text(RULES)
        times: dict[str, list[float]] = {"by hand": [], "pipeline": []}
        own: list[float] = []  # per pipeline run: its time outside the stage jobs
        for i in range(repeats + 1):  # the first round warms caches (imports, codecs) and is not counted
            order = [("by hand", by_hand), ("pipeline", through_pipeline)]
            for name, fn in order if i % 2 else order[::-1]:  # alternate, so drift hits both sides alike
                work = root / f"work-{name.replace(' ', '-')}-{i}"
                p = pipeline_of(archive, work, rules)
                (root / "scratch").mkdir(exist_ok=True)
                t0, inside0 = time.perf_counter(), TimedInProcess.inside
                fn(p, storage, root / "scratch")
                if i:
                    times[name].append(time.perf_counter() - t0)
                    if name == "pipeline":
                        own.append(times[name][-1] - (TimedInProcess.inside - inside0))
    hand, pipe = statistics.median(times["by hand"]), statistics.median(times["pipeline"])
    ratio, bookkeeping = pipe / hand, statistics.median(own)
    print(f"pipeline overhead (--until {UNTIL}, {repeats} repeats, medians): by hand {hand:.2f} s, "
          f"pipeline {pipe:.2f} s, ratio {ratio:.3f} (goal <= 1.05) {'OK' if ratio <= 1.05 else 'OVER'}; "
          f"the pipeline's own time outside the stage jobs {bookkeeping * 1000:.0f} ms "
          f"({(hand + bookkeeping) / hand:.3f} of the stages by hand)")
    return {"by_hand_s": round(hand, 3), "pipeline_s": round(pipe, 3), "ratio": round(ratio, 3),
            "own_s": round(bookkeeping, 4), "own_ratio": round((hand + bookkeeping) / hand, 4), "goal": 1.05,
            "repeats": repeats}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each archive clip")
    a = parser.parse_args()
    main(repeats=a.repeats, seconds=a.seconds)
