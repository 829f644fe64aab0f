"""The run log: ``log.jsonl``, one JSON object per line, that a resumed run continues cleanly."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["JsonLog"]


class JsonLog:
    """Appends one JSON object per line; only the main process writes.

    Parameters
    ----------
    path : path-like
        The ``log.jsonl`` file.
    enabled : bool
        False on every process but the main one.
    """

    def __init__(self, path, enabled: bool):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def forget_after(self, iteration: int) -> None:
        """Drop the records past ``iteration``: a resumed run logs those iterations again."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # half-written when the run was killed: stale too
                continue
            if record.get("iteration", 0) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, self.path)  # atomic: the old log stays whole until this point
