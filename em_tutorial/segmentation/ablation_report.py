"""The ablation's report: ``ablation.md`` (mean +- sd with the heads' costs) and ``ablation.png``."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .ablation import ABLATION_TASKS, HEADS, QUICK_TASKS, mean_sd

__all__ = ["summarise", "write_report", "ablation_figure"]


def summarise(rows: list[dict], quick: bool = False, overrides=None) -> list[dict]:
    """One entry per (task, head), in the rows' order: means, sds and the head's cost."""
    import torch

    from .config import TrainConfig, build_model
    from .costs import head_costs

    tasks, heads = list(ABLATION_TASKS), list(HEADS)
    groups: dict[tuple, list] = {}
    for row in sorted(rows, key=lambda r: (tasks.index(r["task"]), heads.index(r["head"]))):
        groups.setdefault((row["task"], row["head"]), []).append(row)
    table = []
    torch.set_num_threads(1)
    for (task, head), runs in groups.items():
        settings = {**(QUICK_TASKS if quick else ABLATION_TASKS)[task],
                    **(overrides or {}).get(task, {})}  # fmt: skip
        config = TrainConfig(**settings, head=head)
        model = build_model(config, num_classes=11)
        entry = {"task": task, "head": head, "runs": len(runs),
                 **head_costs(model, config.image_size)}  # fmt: skip
        for name in ("miou", "pixel_accuracy", "fragment_iou", "train_seconds"):
            entry[name] = mean_sd(r[name] for r in runs)
        table.append(entry)
    return table


def _cell(pair, digits=3):
    mean, sd = pair
    if np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd:.{digits}f}")


def write_report(out_dir, rows: list[dict], quick: bool, command: str, overrides=None) -> list:
    """Write ``ablation.md`` and ``ablation.png`` into ``out_dir``; return :func:`summarise`."""
    out_dir = Path(out_dir)
    table = summarise(rows, quick, overrides)
    lines = [
        "# Ablation: when does global context help?",
        "",
        f"Made on {datetime.date.today().isoformat()} by `{command}`"
        + (" (--quick: smoke test, the numbers mean nothing)." if quick else "."),
        "",
        "mIoU, pixel accuracy and fragment IoU on the validation scenes: mean ± sample standard "
        "deviation over the seeds. Fragment IoU: mean IoU of the digit classes on the pixels "
        "of the border fragments only (context task). The context runs start from the "
        "backbone of the control run with head `none` of the same seed. Costs: the head "
        "alone, per image, on top of the network without one (head `none`); time is the "
        "median of 20 forward passes on one CPU thread and depends on the machine and its "
        "load.",
        "",
        "| task | head | runs | mIoU | pixel accuracy | fragment IoU | head ms / forward "
        "| extra memory (KiB) | extra MACs (M) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lines.append(
            f"| {e['task']} | {e['head']} | {e['runs']} | {_cell(e['miou'])} | "
            f"{_cell(e['pixel_accuracy'])} | {_cell(e['fragment_iou'])} | {e['head_ms']:.2f} | "
            f"{e['extra_kib']:.0f} | {e['extra_mmacs']:.2f} | {_cell(e['train_seconds'], 0)} |"
        )
    lines += ["", "![mIoU per head, mean ± sd over seeds](ablation.png)", ""]
    (out_dir / "ablation.md").write_text("\n".join(lines))
    ablation_figure(table, out_dir / "ablation.png")
    return table


def ablation_figure(table: list[dict], path=None):
    """Bars of mean mIoU (and fragment IoU) per task and head, with ±1 sd error bars."""
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(e["task"] for e in table))
    heads = list(dict.fromkeys(e["head"] for e in table))
    panels = [("miou", "mIoU")]
    if any(not np.isnan(e["fragment_iou"][0]) for e in table):
        panels.append(("fragment_iou", "fragment IoU (context)"))
    figure = Figure(figsize=(4.5 * len(panels), 3.5), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / len(heads)
    for ax, (metric, title) in zip(axes, panels):
        shown = [t for t in tasks  # the tasks that have this metric
                 if any(e["task"] == t and not np.isnan(e[metric][0]) for e in table)]
        for h, head in enumerate(heads):
            entries = [next((e for e in table if e["task"] == t and e["head"] == head), None)
                       for t in shown]  # fmt: skip
            means = [np.nan if e is None else e[metric][0] for e in entries]
            sds = [0.0 if e is None or np.isnan(e[metric][1]) else e[metric][1] for e in entries]
            ax.bar(np.arange(len(shown)) + (h - (len(heads) - 1) / 2) * width, means, width,
                   yerr=sds, capsize=3, label=head)  # fmt: skip
        ax.set_xticks(np.arange(len(shown)), shown)
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("validation, mean ± sd over seeds")
    axes[-1].legend(title="head", fontsize=8)
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure
