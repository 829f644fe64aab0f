"""How the ``em-tutorial`` command reports failures: one line each, ``em-tutorial: error: ...``."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading

__all__ = ["OneLineParser", "Terminated", "error_line", "one_line", "show_warning",
           "terminate_by_exception"]  # fmt: skip


class Terminated(BaseException):
    """SIGTERM arrived. Like ``KeyboardInterrupt`` it is no ``Exception``, so no ``except
    Exception`` swallows it, and the ``finally`` blocks on its way run: a checkpoint being
    written removes its temporary file."""


@contextlib.contextmanager
def terminate_by_exception():
    """Inside the block, SIGTERM raises :class:`Terminated` in this process.

    A process forked from this one (a data-loader worker) still dies of SIGTERM at once, as
    by default. Outside the main thread, where no handler can be set, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other failure."""

    def error(self, message):
        self.exit(2, f"em-tutorial: error: {one_line(message)} (see `{self.prog} --help`)\n")


def one_line(error) -> str:
    """The message of ``error`` on one line; for an error raised in a data-loader worker, the
    original message rather than torch's report of the worker's traceback."""
    text = str(error)
    if "Original Traceback (most recent call last)" in text:
        last = text.rstrip().splitlines()[-1]  # "package.module.ErrorType: the message"
        text = re.sub(r"^[\w.]+: ", "", last, count=1)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def error_line(error: BaseException) -> str:
    """``em-tutorial: error: <message>``; the error's type is named only when unexpected."""
    from .segmentation import CorruptCheckpoint, TrainingDiverged
    from .segmentation.data import LabelError

    message = one_line(error)
    if isinstance(error, LabelError):
        message += "; `em-tutorial check-data` lists every such file of a VOC split"
    if not isinstance(error, (OSError, ValueError, TrainingDiverged, CorruptCheckpoint)):
        message = f"{type(error).__name__}: {message}"  # unexpected: say what kind it is
    return f"em-tutorial: error: {message}"


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Stands in for ``warnings.showwarning``: one line, no source location."""
    print(f"em-tutorial: warning: {one_line(message)}", file=sys.stderr)
