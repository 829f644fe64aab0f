"""How the ``em-tutorial`` command reports failures: one line each, ``em-tutorial: error: ...``."""

from __future__ import annotations

import argparse
import re
import sys

__all__ = ["OneLineParser", "error_line", "one_line", "show_warning"]


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
