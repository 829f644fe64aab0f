"""The run's JSON files: ``log.jsonl`` (one object per line, continued cleanly by a resumed run)
and ``summary.json``; both always valid JSON (a NaN or infinity is written as ``null``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["JsonLog", "json_safe", "read_json", "write_json"]


def json_safe(value):
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path, value, indent=2) -> None:
    """Write ``value`` as strict JSON (non-finite floats as null), atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path):
    """The JSON value in ``path``; None when the file is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
                handle.write(json.dumps(json_safe(record), allow_nan=False) + "\n")

    def records(self):
        """The records written so far, skipping a line half-written when a run was killed."""
        if not (self.enabled and self.path.is_file()):
            return
        for line in self.path.read_text().splitlines(keepends=True):
            try:
                yield line, json.loads(line)
            except json.JSONDecodeError:
                continue

    def value_at(self, event: str, iteration: int, key: str):
        """``key`` of the last ``event`` record at ``iteration``; None when there is none."""
        values = [r.get(key) for _, r in self.records()
                  if r.get("event") == event and r.get("iteration") == iteration]  # fmt: skip
        return values[-1] if values else None

    def forget_after(self, iteration: int) -> None:
        """Drop the records past ``iteration``: a resumed run logs those iterations again."""
        if not (self.enabled and self.path.is_file()):
            return
        # A half-written last line (the run was killed) is stale too: records() skips it.
        kept = [line if line.endswith("\n") else line + "\n"
                for line, record in self.records() if record.get("iteration", 0) <= iteration]  # fmt: skip
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text("".join(kept))
        os.replace(temporary, self.path)  # atomic: the old log stays whole until this point
