"""The seeded ablation over heads (``em-tutorial ablate``): when does global context help?

Every (task, head, seed) is one training run of the tiny EMANet:

* tasks: ``context`` (:class:`~em_tutorial.segmentation.data.ContextScenes`, where a fragment's
  class is decided by a digit beyond the convolutions' receptive field) and ``control`` (the
  digit scenes, where the convolutions see every digit whole);
* heads: ``none`` (no context block), ``emau`` (the authors' initialisation),
  ``emau_gamma0`` (the EMAU with its output BatchNorm's gamma at 0, the identity at
  initialisation like the standard non-local block), ``nonlocal`` (the standard non-local
  block) and ``pooling`` (DeepLabv3's image pooling); the control task runs ``none`` and
  ``emau`` by default (:data:`TASK_HEADS`). ``nonlocal_gamma1``, the standard non-local block
  started with its output gamma at 1 (the authors' EMAU's footing), runs when named.

The context runs do not start from random weights: their backbone starts from the one that
the control task's no-attention run of the same seed learned (``control-none-seed<s>``, run
first), as EMANet's ResNet starts from ImageNet weights. Trained from scratch on the context
scenes alone, the tiny network spends its whole budget separating ink from background and
barely tells the digits apart (mIoU 0.18 without a context block in a 1200-iteration
pilot), so the comparison of the heads would measure little but that.

Every context run is also probed with the far digits swapped and removed
(:func:`~em_tutorial.segmentation.context_probe.far_digit_probe`), and every row records the
CPU model, the torch version and the threads it ran with: runs are exactly repeatable on one
machine and one thread setting, not across them.

Seeds are ``0 .. seeds - 1``, fixed before any run. Runs go two at a time (one process per
run, one thread each), each in ``OUT/runs/<task>-<head>-seed<s>``. ``OUT/ablation.csv`` gains
one row per finished run the moment it finishes, so an interrupted ablation, started again
with the same command, keeps the finished rows and runs only the rest (an unfinished run
resumes from its last checkpoint). At the end ``OUT/ablation.md`` holds the per-seed tables,
the paired statistics and the heads' costs, and ``OUT/ablation.png`` the paired
differences per seed.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._console import Terminated, terminate_by_exception
from ..backend import usable_cpus

__all__ = [
    "ABLATION_TASKS", "HEADS", "QUICK_TASKS", "TASK_HEADS", "Run", "backbone_path",
    "backbone_source", "cpu_model",
    "export_backbone", "load_run", "plan_runs", "run_ablation", "run_config",
]

HEADS = ("none", "emau", "emau_gamma0", "nonlocal", "nonlocal_gamma1", "pooling")
TASK_HEADS = {"context": ("none", "emau", "emau_gamma0", "nonlocal", "pooling"),
              "control": ("none", "emau")}  # fmt: skip
"""The heads each task runs when none are named (the plan's; ``nonlocal_gamma1`` is run on
request only)."""
ABLATION_TASKS = {
    "context": {"dataset": "context", "iterations": 600},
    "control": {"dataset": "digits", "iterations": 1500},
}
"""Training settings per task (fields of :class:`~em_tutorial.segmentation.TrainConfig`; the
rest is the data set's recipe). On the idle 2-core machine, two runs side by side: about
2.4 minutes per control run and 2 minutes per context run (results/ablation/PLAN.md)."""
QUICK_TASKS = {
    "context": {"dataset": "context", "iterations": 3, "warmup_iterations": 1, "batch_size": 2,
                "num_scenes": 4, "val_scenes": 2, "checkpoint_every": 2, "log_every": 1},
    "control": {"dataset": "digits", "image_size": 48, "iterations": 3, "batch_size": 2,
                "num_scenes": 4, "val_scenes": 2, "checkpoint_every": 2, "log_every": 1},
}  # fmt: skip
"""``--quick``: every code path in seconds; the numbers mean nothing."""
PROBE_COLUMNS = ("follows_swap", "unchanged_by_swap", "fragment_accuracy",
                 "fragment_accuracy_removed")  # fmt: skip
NUMBER_COLUMNS = ("miou", "pixel_accuracy", "fragment_iou", *PROBE_COLUMNS, "train_seconds")
COLUMNS = ("task", "head", "seed", *NUMBER_COLUMNS, "iterations", "image_size", "cpu_model",
           "torch_version", "threads")  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One training run of the ablation."""

    task: str
    head: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.head}-seed{self.seed}"


def plan_runs(tasks, heads, seeds) -> list[Run]:
    """Every (task, head, seed) in a fixed order; ``seeds``: a count N (seeds 0 .. N-1) or a list.

    ``heads``: the heads of every task, or None for each task's :data:`TASK_HEADS`.
    """
    unknown = [t for t in tasks if t not in ABLATION_TASKS]
    unknown += [h for h in heads or () if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown tasks or heads {unknown}; tasks: {sorted(ABLATION_TASKS)}, "
                         f"heads: {list(HEADS)}")  # fmt: skip
    seeds = range(seeds) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError(f"seeds must be at least 1, got {len(seeds)}")
    return [Run(t, h, s) for s in seeds for t in tasks for h in heads or TASK_HEADS[t]]


def run_config(run: Run, out_dir, quick=False, threads=1, iterations=None,
               overrides=None) -> dict:  # fmt: skip
    """The :class:`~em_tutorial.segmentation.TrainConfig` fields of ``run`` under ``out_dir``.

    ``overrides``: ``{task: {field: value}}`` replacing the task's settings (a shorter budget).
    """
    settings = dict((QUICK_TASKS if quick else ABLATION_TASKS)[run.task])
    settings.update((overrides or {}).get(run.task, {}))
    if iterations is not None:
        settings["iterations"] = iterations
    run_dir = Path(out_dir) / "runs" / run.name
    if run.task == "context":
        settings["pretrained_backbone"] = str(backbone_path(out_dir, run.seed))
    return {"log_every": 10, **settings, "head": run.head, "seed": run.seed,
            "out_dir": str(run_dir), "threads": threads, "progress": False,
            "scene_cache": str(Path(out_dir) / "scenes"),
            "resume": (run_dir / "checkpoint.pt").exists()}  # fmt: skip


def backbone_source(seed: int) -> Run:
    """The run whose backbone the context runs of ``seed`` start from."""
    return Run("control", "none", seed)


def backbone_path(out_dir, seed: int) -> Path:
    return Path(out_dir) / "backbones" / f"seed{seed}.pt"


def export_backbone(out_dir, seed: int) -> Path:
    """Write the backbone of :func:`backbone_source` (its ``state_dict``) for the context runs.

    Written atomically, once: a later call keeps the file the earlier runs started from.
    """
    from .checkpoint import atomic_torch_save, load_checkpoint

    path = backbone_path(out_dir, seed)
    if path.exists():
        return path
    source = Path(out_dir) / "runs" / backbone_source(seed).name / "checkpoint.pt"
    prefix = "backbone."
    state = {name[len(prefix):]: tensor for name, tensor in load_checkpoint(source)["model"].items()
             if name.startswith(prefix)}  # fmt: skip
    atomic_torch_save(state, path)
    return path


def load_run(run: Run, out_dir, quick=False, iterations=None, overrides=None):
    """The config and the trained model of a finished run: ``(TrainConfig, EMANet)``."""
    from .checkpoint import load_checkpoint
    from .config import TrainConfig, build_model

    config = TrainConfig(**run_config(run, out_dir, quick, 1, iterations, overrides))
    model = build_model(config, num_classes=11)
    model.load_state_dict(load_checkpoint(Path(config.out_dir) / "checkpoint.pt")["model"])
    return config, model.eval()


def _iterations_done(log_path: Path) -> int:
    """The last logged iteration of a ``log.jsonl`` being written (0 before the first line)."""
    try:
        lines = log_path.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            continue
        if record.get("event") == "train":
            return record["iteration"]
    return 0


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _train_run(run: Run, config: dict) -> dict:
    """Train one run (in a worker process) and return its CSV row."""
    import torch

    from .config import TrainConfig, build_val_set
    from .context_probe import far_digit_probe
    from .evaluation import evaluate
    from .training import train

    config = TrainConfig(**config)
    with terminate_by_exception():  # SIGTERM from the pool's owner: the checkpoint stays whole
        summary = train(config)
    row = {"task": run.task, "head": run.head, "seed": run.seed,
           "miou": summary["metrics"]["miou"],
           "pixel_accuracy": summary["metrics"]["pixel_accuracy"], "fragment_iou": None,
           **dict.fromkeys(PROBE_COLUMNS),
           "train_seconds": summary["train_seconds"], "iterations": summary["iterations"],
           "image_size": config.image_size, "cpu_model": cpu_model(),
           "torch_version": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip
    if config.dataset == "context":
        val_set = build_val_set(config)
        matrix = evaluate(summary["model"], val_set.fragments_only(), batch_size=config.batch_size)
        # mean IoU of the digit classes (1..10) on the fragments' pixels
        row["fragment_iou"] = float(np.nanmean(matrix.iou_per_class()[1:]))
        probe = far_digit_probe(summary["model"], config, batch_size=config.batch_size)
        row.update({name: probe[name] for name in PROBE_COLUMNS})
    return row


def read_rows(path: Path) -> list[dict]:
    """Rows of an ``ablation.csv`` (numbers as floats, seed as int); [] if there is none."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["seed"] = int(row["seed"])
        for name in NUMBER_COLUMNS:
            row[name] = float(row[name]) if row.get(name) not in ("", None) else None
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Rewrite the CSV atomically, so an interruption never leaves half a file."""
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in COLUMNS} for r in rows)
    os.replace(temporary, path)


def run_ablation(out_dir, seeds=3, tasks=tuple(ABLATION_TASKS), heads=None, quick=False,
                 workers=None, progress=True, command="em-tutorial ablate",
                 iterations=None, threads=None, overrides=None) -> list[dict]:  # fmt: skip
    """Run every (task, head, seed) not yet in ``out_dir/ablation.csv``; write the report.

    Parameters
    ----------
    out_dir : path
    seeds : int or sequence of int
        Seeds 0 .. seeds - 1 of every (task, head), or the seeds themselves.
    tasks, heads : sequences of str
        Subsets of :data:`ABLATION_TASKS` and :data:`HEADS`; ``heads=None``: each task's
        :data:`TASK_HEADS`.
    quick : bool
        :data:`QUICK_TASKS`: seconds, for tests.
    workers : int, optional
        Runs at a time (default: 2, or 1 on a one-CPU machine).
    threads : int, optional
        CPU threads of each run (default: ``cpus // workers``).
    overrides : dict, optional
        ``{task: {TrainConfig field: value}}`` on top of the task's settings.
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "ablation.csv"
    planned = plan_runs(tasks, heads, seeds)
    rows = {Run(r["task"], r["head"], r["seed"]): r for r in read_rows(csv_path)}
    todo = [run for run in planned if run not in rows]
    context_seeds = sorted({run.seed for run in todo if run.task == "context"})
    # First the control runs, with the backbones' sources even where control was not asked
    # for (they are rows of the control task all the same); then the context runs.
    sources = [backbone_source(seed) for seed in context_seeds]
    first = [run for run in todo if run.task != "context"]
    first += [run for run in sources if run not in rows and run not in first]
    second = [run for run in todo if run.task == "context"]
    cpus = usable_cpus()
    workers = workers or max(1, min(2, cpus))
    threads = threads or max(1, cpus // workers)
    runs_done = len(planned) - len(todo)
    for phase in (first, second):
        if phase is second:
            for seed in context_seeds:
                export_backbone(out_dir, seed)
        configs = {run: run_config(run, out_dir, quick, threads, iterations, overrides)
                   for run in phase}  # fmt: skip
        for row in _train_in_pool(configs, workers, progress, runs_done):
            rows[Run(row["task"], row["head"], row["seed"])] = row
            _write_rows(csv_path, list(rows.values()))
            runs_done += 1
    from .ablation_report import write_report

    # The report covers every row of the CSV, also those of earlier calls with other subsets.
    write_report(out_dir, list(rows.values()), quick, command, overrides)
    return [rows[run] for run in planned]


def _train_in_pool(configs: dict, workers: int, progress: bool, runs_done: int):
    """Train ``{run: config}`` ``workers`` at a time; yield each row as its run finishes.

    One bar counts iterations over all runs, read from the runs' ``log.jsonl`` every second.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    total = sum(_planned_iterations(config) for config in configs.values())
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool, \
            tqdm(total=total, unit="it", desc=f"ablation ({runs_done} runs already done)",
                 disable=not progress or not configs) as bar:  # fmt: skip
        pending = {pool.submit(_train_run, run, config): run for run, config in configs.items()}
        finished_iterations = 0
        try:
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    run = pending.pop(future)
                    finished_iterations += _planned_iterations(configs[run])
                    row = future.result()
                    bar.set_postfix_str(f"{run.name} mIoU {row['miou']:.3f}", refresh=False)
                    yield row
                running = sum(_iterations_done(Path(configs[r]["out_dir"]) / "log.jsonl")
                              for r in pending.values())  # fmt: skip
                bar.update(finished_iterations + running - bar.n)
        except Terminated:  # pass SIGTERM on, or leaving the pool would wait for the runs
            workers = list(pool._processes.values())  # no public way to reach them
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:
                worker.terminate()
            raise


def _planned_iterations(config: dict) -> int:
    """Iterations of a run's schedule (the recipe's when its config does not set them)."""
    from .config import TrainConfig

    return TrainConfig(**{**config, "resume": False}).iterations


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value) of the non-missing values."""
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), sd
