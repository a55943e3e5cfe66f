"""While a search runs: the progress line on a terminal and Ctrl-C as a request to stop."""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import time
from typing import Any, Callable, Iterator

__all__ = ["SigintSeen", "Progress", "stdout_is_terminal", "held_ctrl_c"]


@contextlib.contextmanager
def held_ctrl_c() -> Iterator[None]:
    """Hold Ctrl-C while the block runs; one pressed meanwhile raises ``KeyboardInterrupt`` when it ends.

    For imports of C extensions (torch): a ``KeyboardInterrupt`` raised inside one can abort the
    whole process (``terminate called after throwing an instance of 'pybind11::error_already_set'``)
    instead of stopping it. Only in the main thread, and only over Python's default handler."""
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (progress lines and Ray's status tables are drawn only there)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


class SigintSeen:
    """Ctrl-C as a request to stop. The first one is recorded, and the running trial stops at
    the end of its epoch (:meth:`watch` raises ``KeyboardInterrupt`` there, between storage
    calls); a block that ends without one raises it on exit. A second Ctrl-C raises at once.

    Raising from the signal handler itself lands anywhere, also inside a storage commit: a
    SQLite connection cut short there keeps the database locked, and the writes that label the
    trial then wait out the busy timeout (the likely reason a run once took minutes to stop).
    An error that a second Ctrl-C causes inside a library still counts as the interruption
    (:meth:`as_interrupt`)."""

    active: "SigintSeen | None" = None  # the one of this process, while its block runs

    def __init__(self, announce: bool = True, stop: Any = None) -> None:
        self.announce = announce  # say on stderr that the first Ctrl-C was heard (the main process)
        self.stop = stop  # a multiprocessing Event by which the main process asks a worker to stop

    @property
    def requested(self) -> bool:
        """Whether a stop was asked: Ctrl-C here, or the main process's ``stop`` event."""
        return self.seen or (self.stop is not None and self.stop.is_set())

    def __enter__(self) -> "SigintSeen":
        self.seen = False
        self._previous = signal.getsignal(signal.SIGINT)
        if self._previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handler)
        SigintSeen.active = self
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.seen:
            raise KeyboardInterrupt
        self.seen = True
        if self.announce:  # os.write: a print could re-enter a write to stderr that the signal cut into
            os.write(2, b"\nauxilearn-hpo tune: Ctrl-C: stopping after the running epoch "
                        b"(Ctrl-C again to stop at once)\n")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        SigintSeen.active = None
        if self._previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._previous)
        if exc_type is None and self.requested:
            raise KeyboardInterrupt

    @classmethod
    def watch(cls, progress: Callable[[int, Any, int], None] | None) -> Callable[[int, Any, int], None]:
        """A trial's per-epoch callback: raises ``KeyboardInterrupt`` after an epoch once Ctrl-C
        has been seen, then calls ``progress`` (if any)."""
        def watched(number: int, report: Any, epochs: int) -> None:
            if report is not None and cls.active is not None and cls.active.requested:
                raise KeyboardInterrupt
            if progress is not None:
                progress(number, report, epochs)
        return watched

    @contextlib.contextmanager
    def as_interrupt(self) -> Iterator[None]:
        """Re-raise any exception that follows a Ctrl-C as ``KeyboardInterrupt``."""
        try:
            yield
        except KeyboardInterrupt:
            raise
        except Exception as err:
            if self.seen:
                raise KeyboardInterrupt from err
            raise


class Progress:
    """The running trial's progress as one line redrawn in place on a terminal::

        trial 3: epoch 17/60, accuracy 0.873, 12 s

    Drawn on stdout only when it is a terminal (:meth:`on_stdout` yields None otherwise), cleared
    when the trial ends and before each line Optuna logs. With ``--workers N`` every worker draws
    its own trials (prefixed ``worker i``) on the same line, each redraw one write."""

    def __init__(self, stream: Any, metric: str, worker: int | None = None) -> None:
        self.stream, self.metric, self.worker = stream, metric, worker
        self.started: dict[int, float] = {}
        self.shown = False

    @classmethod
    @contextlib.contextmanager
    def on_stdout(cls, metric: str, worker: int | None = None) -> Iterator["Progress | None"]:
        """A progress line on stdout while the block runs, or None when stdout is not a terminal."""
        import logging

        if not stdout_is_terminal():
            yield None
            return
        progress = cls(sys.stdout, metric, worker)
        handlers = logging.getLogger("optuna").handlers
        for handler in handlers:
            handler.addFilter(progress._before_log)
        try:
            yield progress
        finally:
            for handler in handlers:
                handler.removeFilter(progress._before_log)
            progress.clear()

    def __call__(self, number: int, report: Any, epochs: int) -> None:
        if report is None:  # the trial ended
            self.started.pop(number, None)
            self.clear()
            return
        now = time.perf_counter()
        started = self.started.setdefault(number, now - (report.seconds if math.isfinite(report.seconds) else 0.0))
        metric = f", {self.metric} {report.val_metric:.4g}" if math.isfinite(report.val_metric) else ""
        who = f"worker {self.worker}, " if self.worker is not None else ""
        text = f"{who}trial {number}: epoch {report.epoch}/{epochs}{metric}, {now - started:.0f} s"
        width = shutil.get_terminal_size((80, 24)).columns - 1  # never wrap: \r returns to this line only
        self._write("\r\033[K" + text[:max(width, 10)])
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self._write("\r\033[K")
            self.shown = False

    def _before_log(self, record: Any) -> bool:
        """A logging filter that passes every record: it clears the line first (any worker's)."""
        if self.worker is not None:
            self.shown = True  # another worker may have drawn it
        self.clear()
        return True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: no more progress
            pass
