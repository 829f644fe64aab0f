"""The ablation's report: ``ablation.md`` (per-seed tables, paired statistics, decision rules,
the far-digit probe, the heads' costs, the machines) and ``ablation.png`` (paired differences).

The decision rules are those of ``results/ablation/PLAN.md``, fixed before the main run:

* primary: the EMAU (authors' initialisation) gains fragment IoU over no attention; claimed
  only if the one-sided Wilcoxon p < 0.05 **and** at least 90 % of the seeds gain;
* mIoU: the paired 95 % CI of the same gain, reported as it falls;
* the EMAU against the standard non-local block: non-inferior on fragment IoU if the lower end
  of the paired 95 % CI of (EMAU - non-local) lies above -0.05 (a 5-point margin).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .ablation import ABLATION_TASKS, HEADS, PROBE_COLUMNS, QUICK_TASKS, mean_sd
from .paired_stats import paired_comparison

__all__ = ["COMPARISONS", "decisions", "paired_table", "summarise", "write_report",
           "ablation_figure"]  # fmt: skip

COMPARISONS = (("emau", "none"), ("emau_gamma0", "none"), ("nonlocal", "none"),
               ("nonlocal_gamma1", "none"), ("pooling", "none"), ("emau", "nonlocal"),
               ("emau_gamma0", "nonlocal"), ("emau", "nonlocal_gamma1"),
               ("emau", "emau_gamma0"))  # fmt: skip
"""(head A, head B) pairs compared seed by seed, where both ran."""
ALPHA, LEAST_SHARE_POSITIVE, NON_INFERIORITY_MARGIN = 0.05, 0.9, 0.05
"""The decision rules' constants (see the module docstring)."""
LABELS = {"none": "none", "emau": "EMAU", "emau_gamma0": "EMAU (γ₀ = 0)",
          "nonlocal": "non-local", "nonlocal_gamma1": "non-local (γ₀ = 1)",
          "pooling": "image pooling"}  # fmt: skip


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
        for name in ("miou", "pixel_accuracy", "fragment_iou", *PROBE_COLUMNS, "train_seconds"):
            entry[name] = mean_sd(r[name] for r in runs)
        table.append(entry)
    return table


def paired_table(rows: list[dict], task: str, metric: str) -> list[dict]:
    """:func:`paired_comparison` of every pair of :data:`COMPARISONS` run on ``task`` on >= 2
    common seeds; each entry also names ``task``, ``metric``, ``a``, ``b`` and ``seeds``."""
    values = {(r["head"], r["seed"]): r[metric] for r in rows
              if r["task"] == task and r[metric] is not None}  # fmt: skip
    entries = []
    for a, b in COMPARISONS:
        seeds = sorted(s for h, s in values if h == a and (b, s) in values)
        if len(seeds) < 2:
            continue
        result = paired_comparison([values[a, s] for s in seeds], [values[b, s] for s in seeds])
        entries.append({"task": task, "metric": metric, "a": a, "b": b, "seeds": seeds, **result})
    return entries


def decisions(rows: list[dict]) -> list[tuple[str, str]]:
    """The plan's decision rules applied to ``rows``: (rule, verdict in words) pairs."""
    def find(a, b, metric):
        return next((e for e in paired_table(rows, "context", metric)
                     if (e["a"], e["b"]) == (a, b)), None)  # fmt: skip

    verdicts = []
    primary = find("emau", "none", "fragment_iou")
    if primary:
        needed = int(np.ceil(LEAST_SHARE_POSITIVE * primary["n"]))
        met = primary["wilcoxon_p"] < ALPHA and primary["positive"] >= needed
        verdicts.append((
            f"Primary: EMAU gains fragment IoU over none (one-sided Wilcoxon p < {ALPHA} and "
            f">= {needed} of {primary['n']} seeds positive)",
            f"{'MET' if met else 'NOT MET'}: gain {100 * primary['mean']:+.1f} points, p = "
            f"{primary['wilcoxon_p']:.3g}, {primary['positive']} of {primary['n']} positive"))
    miou = find("emau", "none", "miou")
    if miou:
        low, high = miou["ci"]
        verdicts.append(("mIoU gain of the EMAU over none, paired 95 % CI",
                         f"{100 * miou['mean']:+.1f} points (CI {100 * low:+.1f} to "
                         f"{100 * high:+.1f}), paired t p = {miou['t_p']:.3g}"))  # fmt: skip
    for head in ("emau", "emau_gamma0"):
        versus = find(head, "nonlocal", "fragment_iou")
        if versus:
            low = versus["ci"][0]
            verdict = "NON-INFERIOR" if low > -NON_INFERIORITY_MARGIN else "NOT SHOWN NON-INFERIOR"
            verdicts.append((
                f"{LABELS[head]} against the standard non-local block on fragment IoU "
                f"(non-inferior if the CI's lower end > -{100 * NON_INFERIORITY_MARGIN:.0f} points)",
                f"{verdict}: difference {100 * versus['mean']:+.1f} points (CI {100 * low:+.1f} "
                f"to {100 * versus['ci'][1]:+.1f})"))
    return verdicts


def _cell(pair, digits=3):
    mean, sd = pair
    if np.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if np.isnan(sd) else f" ± {sd:.{digits}f}")


def _per_seed_lines(rows, task, metric) -> list[str]:
    heads = [h for h in HEADS if any(r["task"] == task and r["head"] == h for r in rows)]
    seeds = sorted({r["seed"] for r in rows if r["task"] == task})
    value = {(r["head"], r["seed"]): r[metric] for r in rows if r["task"] == task}
    lines = ["| seed | " + " | ".join(LABELS[h] for h in heads) + " |",
             "|---" * (len(heads) + 1) + "|"]  # fmt: skip
    for seed in seeds:
        cells = [value.get((h, seed)) for h in heads]
        lines.append(f"| {seed} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
                     + " |")  # fmt: skip
    return lines


def _paired_lines(entries) -> list[str]:
    lines = ["| A - B | seeds | mean gain (points) | 95 % CI | A better on | paired t p | "
             "Wilcoxon p (one-sided, A > B) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        low, high = e["ci"]
        lines.append(f"| {LABELS[e['a']]} - {LABELS[e['b']]} | {e['n']} | {100 * e['mean']:+.1f} | "
                     f"{100 * low:+.1f} to {100 * high:+.1f} | {e['positive']} of {e['n']} | "
                     f"{e['t_p']:.3g} | {e['wilcoxon_p']:.3g} |")  # fmt: skip
    return lines


def write_report(out_dir, rows: list[dict], quick: bool, command: str, overrides=None) -> list:
    """Write ``ablation.md`` and ``ablation.png`` into ``out_dir``; return :func:`summarise`."""
    out_dir = Path(out_dir)
    table = summarise(rows, quick, overrides)
    tasks = [t for t in ABLATION_TASKS if any(r["task"] == t for r in rows)]
    lines = [
        "# Ablation: when does global context help?",
        "",
        f"Made on {datetime.date.today().isoformat()} by `{command}`"
        + (" (--quick: smoke test, the numbers mean nothing)." if quick else "."),
        "",
        "Every seed trains every head from the same backbone (the control run without "
        "attention of that seed) on the same scenes, so heads are compared **seed by seed**: "
        "paired differences, their 95 % CI (t), the paired t-test and the one-sided Wilcoxon "
        "signed-rank test, all from `scipy.stats`. Fragment IoU: mean IoU of the digit classes "
        "on the pixels of the border fragments only, whose class only the far digits decide.",
        "",
        "## Decision rules (fixed in PLAN.md before the main run)",
        "",
        *[f"- **{rule}**: {verdict}" for rule, verdict in decisions(rows)],
        "",
    ]
    for task in tasks:
        metrics = ("fragment_iou", "miou") if task == "context" else ("miou",)
        for metric in metrics:
            name = {"fragment_iou": "fragment IoU", "miou": "mIoU"}[metric]
            lines += [f"## {task}: {name}", "", *_per_seed_lines(rows, task, metric), "",
                      *_paired_lines(paired_table(rows, task, metric)), ""]  # fmt: skip
    if "context" in tasks:
        lines += [
            "## The far-digit probe (context task, validation scenes)",
            "",
            "Shares of the fragments' ink pixels, mean ± sd over seeds. *Follows the swap*: "
            "predicted as the far digits' new class once they are redrawn as another class "
            "(and not before). *Unchanged*: prediction the same after the swap. *Accuracy, far "
            "digits removed*: the far digits painted out with the background texture. A network "
            "without a global block cannot follow: its fragments lie beyond its convolutions' "
            "reach.",
            "",
            "| head | follows the swap | unchanged by the swap | fragment accuracy | accuracy, "
            "far digits removed |",
            "|---|---|---|---|---|",
        ]
        for e in (e for e in table if e["task"] == "context"):
            lines.append(f"| {LABELS[e['head']]} | {_cell(e['follows_swap'])} | "
                         f"{_cell(e['unchanged_by_swap'])} | {_cell(e['fragment_accuracy'])} | "
                         f"{_cell(e['fragment_accuracy_removed'])} |")  # fmt: skip
        lines.append("")
    lines += [
        "## Means and costs",
        "",
        "Mean ± sample sd over seeds. Costs: the head alone, per image, on top of the network "
        "without one; time is the median of 20 forward passes on one CPU thread and depends "
        "on the machine and its load.",
        "",
        "| task | head | runs | mIoU | fragment IoU | head ms / forward | extra memory (KiB) "
        "| extra MACs (M) | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lines.append(
            f"| {e['task']} | {LABELS[e['head']]} | {e['runs']} | {_cell(e['miou'])} | "
            f"{_cell(e['fragment_iou'])} | {e['head_ms']:.2f} | {e['extra_kib']:.0f} | "
            f"{e['extra_mmacs']:.2f} | {_cell(e['train_seconds'], 0)} |"
        )
    machines: dict[tuple, int] = {}
    for r in rows:
        key = (r.get("cpu_model") or "not recorded", r.get("torch_version") or "not recorded",
               r.get("threads") or "not recorded")  # fmt: skip
        machines[key] = machines.get(key, 0) + 1
    lines += ["", "## Where the runs ran", "",
              "Runs repeat exactly on the same CPU, torch build and thread count; across them "
              "the numbers move (see the README).", "",
              "| CPU | torch | threads | runs |", "|---|---|---|---|",
              *[f"| {c} | {t} | {n} | {k} |" for (c, t, n), k in machines.items()],
              "", "![Paired differences per seed](ablation.png)", ""]  # fmt: skip
    (out_dir / "ablation.md").write_text("\n".join(lines))
    ablation_figure(rows, out_dir / "ablation.png")
    return table


def ablation_figure(rows: list[dict], path=None):
    """Per seed, each head's difference from ``none`` (fragment IoU, context mIoU, control mIoU),
    one dot per seed, with the mean and its paired 95 % CI."""
    from matplotlib.figure import Figure

    panels = [(t, m) for t, m in (("context", "fragment_iou"), ("context", "miou"),
                                  ("control", "miou"))  # fmt: skip
              if paired_table(rows, t, m)]
    figure = Figure(figsize=(4.2 * max(1, len(panels)), 3.6), layout="constrained")
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (task, metric) in zip(axes, panels):
        entries = [e for e in paired_table(rows, task, metric) if e["b"] == "none"]
        for i, e in enumerate(entries):
            d = 100 * np.asarray(e["differences"])
            jitter = np.linspace(-0.15, 0.15, len(d))
            ax.scatter(i + jitter, d, s=14, alpha=0.7)
            low, high = (100 * v for v in e["ci"])
            ax.errorbar(i + 0.3, 100 * e["mean"], yerr=[[100 * e["mean"] - low],
                                                      [high - 100 * e["mean"]]],
                        fmt="D", color="black", capsize=4, markersize=4)  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlim(-0.6, len(entries) - 0.2)  # one head keeps the width of one slot
        ax.set_xticks(range(len(entries)), [LABELS[e["a"]] for e in entries], rotation=20,
                      fontsize=8)  # fmt: skip
        name = {"fragment_iou": "fragment IoU", "miou": "mIoU"}[metric]
        ax.set_title(f"{task}: {name}, head - none", fontsize=10)
        ax.set_ylabel("points, per seed (dots); mean, 95 % CI")
        ax.grid(axis="y", alpha=0.3)
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure
