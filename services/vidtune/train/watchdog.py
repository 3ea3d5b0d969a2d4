"""Hang watchdog: a rank that stops advancing ends its attempt with its stacks logged.

Every rank beats a heartbeat at each unit of progress (a sample cached, a step started, a state
saved). A thread watches it; when nothing advanced for `timeout_s`, it writes the Python stacks of
every thread of this process (faulthandler) and the reason to `<out>/logs/`, then ends the process
with HANG_EXIT_CODE. A hung rank stalls the others in their next collective, so every rank's watchdog
fires and every rank's stacks are logged (a rank the launcher terminates first writes them to stderr on
SIGTERM); the process-group timeout (twice the window) is the second
line for a rank stuck inside a collective. The Job's retry then resumes from the last saved state.
"""
from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from ..platform.storage import Storage, join

log = logging.getLogger(__name__)

HANG_EXIT_CODE = 124  # as timeout(1): the attempt ran out of time, a retry may succeed


def _exit_process(reason: str) -> None:
    print(f"error: {reason}", file=sys.stderr, flush=True)
    os._exit(HANG_EXIT_CODE)


class HangWatchdog:
    """Watches one rank's progress; `beat(stage, step)` marks progress, `close()` stops watching."""

    def __init__(self, timeout_s: float, out: str, rank: int, storage: Storage,
                 on_hang: Callable[[str], None] = _exit_process, interval_s: float | None = None):
        self.timeout_s, self.out, self.rank, self.storage, self.on_hang = timeout_s, out, rank, storage, on_hang
        self.interval_s = interval_s or min(30.0, max(0.5, timeout_s / 10))
        self.stage, self.step = "starting", 0
        self.last = time.monotonic()
        self._written: tuple | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"hang-watchdog-{rank}", daemon=True)
        self._thread.start()
        # When another rank's watchdog fires first, the launcher (torchrun, the kubelet) ends this rank
        # with SIGTERM: its stacks then go to stderr, the pod's log, before it terminates.
        self._on_sigterm = False
        if threading.current_thread() is threading.main_thread():
            try:
                faulthandler.register(signal.SIGTERM, file=sys.stderr, all_threads=True, chain=True)
                self._on_sigterm = True
            except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
                pass  # stderr without a file descriptor (captured): nothing to write the stacks to

    @property
    def heartbeat_uri(self) -> str:
        return join(self.out, "logs", f"heartbeat-rank{self.rank}.json")

    def beat(self, stage: str, step: int = 0) -> None:
        self.stage, self.step, self.last = stage, step, time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._on_sigterm:
            faulthandler.unregister(signal.SIGTERM)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                self._fire(idle)
                return
            self._write_heartbeat(idle)

    def _write_heartbeat(self, idle: float) -> None:
        state = (self.stage, self.step)
        if state == self._written:
            return
        try:
            self.storage.write_text(self.heartbeat_uri, json.dumps({
                "rank": self.rank, "stage": self.stage, "step": self.step, "pid": os.getpid(),
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
            self._written = state
        except Exception as e:  # a storage hiccup must not end a healthy run
            log.warning("heartbeat of rank %d not written: %s", self.rank, e)

    def _fire(self, idle: float) -> None:
        reason = (f"rank {self.rank} made no progress for {idle:.0f} s (hang_timeout_s={self.timeout_s:g}) "
                  f"in stage {self.stage!r} after step {self.step}; the attempt ends so a retry resumes from "
                  f"the last saved state")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        uri = join(self.out, "logs", f"hang-{stamp}-rank{self.rank}.txt")
        try:
            with tempfile.TemporaryFile("w+") as f:
                f.write(reason + "\n\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
                f.seek(0)
                stacks = f.read()
            sys.stderr.write(stacks)
            self.storage.write_text(uri, stacks)
            reason += f"; stacks in {uri}"
        except Exception as e:  # the exit matters more than the log
            reason += f"; stacks not written ({e})"
        log.error(reason)
        self.on_hang(reason)


class NoWatchdog:
    """Stands in when the watchdog is off (hang_timeout_s = 0)."""

    def beat(self, stage: str, step: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


def watchdog(timeout_s: float, out: str, rank: int, storage: Storage,
             on_hang: Callable[[str], None] | None = None) -> HangWatchdog | NoWatchdog:
    if timeout_s <= 0:
        return NoWatchdog()
    return HangWatchdog(timeout_s, out, rank, storage, on_hang or _exit_process)
