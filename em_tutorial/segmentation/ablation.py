"""The seeded ablation over heads (``em-tutorial ablate``): when does global context help?

Every (task, head, seed) is one training run of the tiny EMANet:

* tasks: ``context`` (:class:`~em_tutorial.segmentation.data.ContextScenes`, where a fragment's
  class is decided by a digit beyond the convolutions' receptive field) and ``control`` (the
  digit scenes, where the convolutions see every digit whole);
* heads: ``none`` (no context block), ``emau``, ``nonlocal``, ``pooling``.

Seeds are ``0 .. seeds - 1``, fixed before any run. Runs go two at a time (one process per
run, one thread each), each in ``OUT/runs/<task>-<head>-seed<s>``. ``OUT/ablation.csv`` gains
one row per finished run the moment it finishes, so an interrupted ablation, started again
with the same command, keeps the finished rows and runs only the rest (an unfinished run
resumes from its last checkpoint). At the end ``OUT/ablation.md`` holds the mean +- sd table
with the heads' costs and ``OUT/ablation.png`` the bar chart.
"""

from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ABLATION_TASKS", "HEADS", "QUICK_TASKS", "Run", "plan_runs", "run_ablation"]

HEADS = ("none", "emau", "nonlocal", "pooling")
#: Training settings per task (fields of :class:`~em_tutorial.segmentation.TrainConfig`);
#: about 5 and 2 minutes per run on one idle core.
ABLATION_TASKS = {
    "context": {"dataset": "context"},
    "control": {"dataset": "digits", "iterations": 1500},
}
#: ``--quick``: every code path in seconds; the numbers mean nothing.
QUICK_TASKS = {
    "context": {"dataset": "context", "image_size": 192, "iterations": 3, "batch_size": 2,
                "num_scenes": 4, "val_scenes": 2, "checkpoint_every": 2},
    "control": {"dataset": "digits", "image_size": 48, "iterations": 3, "batch_size": 2,
                "num_scenes": 4, "val_scenes": 2, "checkpoint_every": 2},
}  # fmt: skip
COLUMNS = ("task", "head", "seed", "miou", "pixel_accuracy", "fragment_iou", "train_seconds",
           "iterations", "image_size")  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One training run of the ablation."""

    task: str
    head: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.head}-seed{self.seed}"


def plan_runs(tasks, heads, seeds: int) -> list[Run]:
    """Every (task, head, seed) in a fixed order; seeds ``0 .. seeds - 1``."""
    unknown = [t for t in tasks if t not in ABLATION_TASKS] + [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown tasks or heads {unknown}; tasks: {sorted(ABLATION_TASKS)}, "
                         f"heads: {list(HEADS)}")  # fmt: skip
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    return [Run(t, h, s) for s in range(seeds) for t in tasks for h in heads]


def _run_config(run: Run, out_dir: Path, quick: bool, threads: int, iterations=None) -> dict:
    settings = dict((QUICK_TASKS if quick else ABLATION_TASKS)[run.task])
    if iterations is not None:
        settings["iterations"] = iterations
    run_dir = out_dir / "runs" / run.name
    return {**settings, "head": run.head, "seed": run.seed, "out_dir": str(run_dir),
            "threads": threads, "progress": False, "log_every": 10,
            "resume": (run_dir / "checkpoint.pt").exists()}  # fmt: skip


def _train_run(run: Run, config: dict) -> dict:
    """Train one run (in a worker process) and return its CSV row."""
    from .config import TrainConfig, build_val_set
    from .evaluation import evaluate
    from .training import train

    config = TrainConfig(**config)
    summary = train(config)
    row = {"task": run.task, "head": run.head, "seed": run.seed,
           "miou": summary["metrics"]["miou"],
           "pixel_accuracy": summary["metrics"]["pixel_accuracy"], "fragment_iou": None,
           "train_seconds": summary["train_seconds"], "iterations": summary["iterations"],
           "image_size": config.image_size}  # fmt: skip
    val_set = build_val_set(config)
    if hasattr(val_set, "fragments_only"):
        matrix = evaluate(summary["model"], val_set.fragments_only(), batch_size=config.batch_size)
        # mean IoU of the digit classes (1..10) on the fragments' pixels
        row["fragment_iou"] = float(np.nanmean(matrix.iou_per_class()[1:]))
    return row


def read_rows(path: Path) -> list[dict]:
    """Rows of an ``ablation.csv`` (numbers as floats, seed as int); [] if there is none."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"] = int(row["seed"])
        for name in ("miou", "pixel_accuracy", "fragment_iou", "train_seconds"):
            row[name] = float(row[name]) if row[name] not in ("", None) else None
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV atomically, so an interruption never leaves half a file."""
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    os.replace(temporary, path)


def run_ablation(out_dir, seeds=3, tasks=tuple(ABLATION_TASKS), heads=HEADS, quick=False,
                 workers=None, progress=True, command="em-tutorial ablate",
                 iterations=None) -> list[dict]:  # fmt: skip
    """Run every (task, head, seed) not yet in ``out_dir/ablation.csv``; write the report.

    Parameters
    ----------
    out_dir : path
    seeds : int
        Seeds 0 .. seeds - 1 of every (task, head).
    tasks, heads : sequences of str
        Subsets of :data:`ABLATION_TASKS` and :data:`HEADS`.
    quick : bool
        :data:`QUICK_TASKS`: seconds, for tests.
    workers : int, optional
        Runs at a time (default: 2, or 1 on a one-CPU machine); each gets
        ``cpus // workers`` threads.
    progress : bool
    command : str
        Written into ``ablation.md`` as the command that made it.
    iterations : int, optional
        Override every task's iterations (a shorter pilot; the rows record it).

    Returns
    -------
    list of dict
        The rows of the planned runs, in plan order.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "ablation.csv"
    planned = plan_runs(tasks, heads, seeds)
    rows = {Run(r["task"], r["head"], r["seed"]): r for r in read_rows(csv_path)}
    todo = [run for run in planned if run not in rows]
    cpus = len(os.sched_getaffinity(0))
    workers = workers or max(1, min(2, cpus))
    threads = max(1, cpus // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool, \
            tqdm(total=len(planned), initial=len(planned) - len(todo), unit="run",
                 desc="ablation", disable=not progress) as bar:  # fmt: skip
        futures = {pool.submit(_train_run, run, _run_config(run, out_dir, quick, threads, iterations)): run
                   for run in todo}  # fmt: skip
        for future in as_completed(futures):
            run = futures[future]
            rows[run] = future.result()
            _write_rows(csv_path, list(rows.values()))
            bar.set_postfix_str(f"{run.name}: mIoU {rows[run]['miou']:.3f}")
            bar.update(1)
    finished = [rows[run] for run in planned]
    from .ablation_report import write_report

    write_report(out_dir, finished, quick, command)
    return finished


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value) of the non-missing values."""
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), sd
