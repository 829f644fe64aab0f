"""The tour: the whole story on one CPU in under ten minutes (``em-tutorial tour``).

1. The three stages agree: EM attention on the same input and bases in NumPy, PyTorch and,
   when a GPU is present, CuPy; the largest differences are printed.
2. For each of three seeds fixed in advance (0, 1, 2; none is picked or dropped), the tiny
   EMANet and the same network without its EMAU train, two runs at a time, on the **digit**
   scenes (the control, where the convolutions see every digit whole) and then on the
   **context** scenes (a fragment's class is decided by a digit beyond the convolutions'
   reach). Both context runs of a seed start from the backbone that the control run without
   the EMAU learned, so they differ only in the EMAU. A shortened form of the ablation's
   recipe (:data:`TOUR_OVERRIDES`), so that the nine runs fit the budget.
3. All are evaluated on their validation scenes; the context task by the IoU of its fragments
   (the headline), and by the swap test: the far digits redrawn as another class, do the
   fragments' predictions follow?
4. Figures (the per-seed paired gains, the swap test, the receptive field on a scene,
   attention maps, predictions, loss curves) and a markdown report go to the output folder.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from .backend import usable_cpus

__all__ = ["NETWORKS", "TOUR_OVERRIDES", "TOUR_SEEDS", "TOUR_TASKS", "equivalence_check",
           "run_tour"]  # fmt: skip

TOUR_TASKS = ("context", "control")
"""The tour's runs: both tasks, with and without the EMAU, for each of :data:`TOUR_SEEDS`."""
TOUR_SEEDS = (0, 1, 2)
NETWORKS = {"emau": "EMANet", "none": "without EMAU"}
TOUR_OVERRIDES = {
    "control": {"iterations": 800, "num_scenes": 1500, "val_scenes": 150},
    "context": {"iterations": 400, "num_scenes": 600, "val_scenes": 150},
}
"""The ablation's recipe (:data:`~em_tutorial.segmentation.ablation.ABLATION_TASKS`),
shortened to fit ten minutes on an idle 2-core CPU: fewer iterations and scenes."""


def equivalence_check(seed=0, batch=2, n_points=256, channels=64, n_bases=16, n_iter=3):
    """Run EM attention on one input through every available stage; return the largest gaps.

    The NumPy stage in float64 is the reference. PyTorch runs in float64 (expect ~1e-15) and
    float32 (~1e-6); CuPy, when a GPU is visible, runs the plain port and the fused kernels.

    Returns
    -------
    dict of stage name -> {"z": max |dz|, "mu": max |dmu|, "x_tilde": max |dx_tilde|}
    """
    import torch

    from . import ema
    from .backend import gpu_available, to_numpy
    from .nn import functional as F_em

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_points, channels))  # (B, N, C)
    mu = rng.standard_normal((n_bases, channels))  # (K, C)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    reference = ema.em_attention(x, mu, n_iter=n_iter)  # (z, mu, x_tilde)

    def gaps(result):
        return {
            name: float(np.abs(to_numpy(r).astype(np.float64) - ref).max())
            for name, r, ref in zip(("z", "mu", "x_tilde"), result, reference)
        }

    report = {}
    for dtype in (torch.float64, torch.float32):
        result = F_em.em_attention(torch.from_numpy(x).to(dtype), torch.from_numpy(mu).to(dtype), n_iter)
        report[f"PyTorch {str(dtype).removeprefix('torch.')}"] = gaps(result)
    if gpu_available():
        from . import gpu

        x_gpu, mu_gpu = gpu.to_gpu(x, mu, dtype=None)
        report["CuPy float64 (plain port)"] = gaps(ema.em_attention(x_gpu, mu_gpu, n_iter=n_iter))
        x32, mu32 = gpu.to_gpu(x, mu)
        report["CuPy float32 (fused kernels)"] = gaps(gpu.em_attention_fused(x32, mu32, n_iter=n_iter))
    return report


def _receptive_fields(model_without, val_set) -> dict:
    """Theoretical and effective receptive fields of the trained network without the EMAU."""
    import torch

    from .segmentation.receptive_field import effective_receptive_field, theoretical_receptive_field

    images = torch.stack([torch.as_tensor(val_set[i][0]) for i in range(min(8, len(val_set)))])
    effective, _ = effective_receptive_field(model_without, images)
    return {"theoretical": theoretical_receptive_field(model_without), "effective": effective}


def _fragment_pixel(val_set, index=0):
    """(row, column) of an ink pixel of a fragment in scene ``index`` (the middle one)."""
    ink = val_set.fragment_windows(index) & (val_set.raw(index)[1] > 0)
    cells = np.argwhere(ink)
    return tuple(int(v) for v in cells[len(cells) // 2])


def _draw_figures(models: dict, configs: dict, rows: list, fields: dict, out_dir: Path) -> list:
    """Paired gains, swap test, receptive field, attention maps, predictions and loss curves;
    (caption, file) pairs. Single-seed figures show the first seed."""
    from .segmentation.ablation_report import ablation_figure
    from .segmentation.config import build_val_set
    from .segmentation.figures import (
        attention_figure,
        predictions_figure,
        receptive_field_figure,
        swap_figure,
        training_curves_figure,
    )

    seed = min(r["seed"] for r in rows)
    config = configs["context", "emau", seed]
    context, swapped = (build_val_set(config, far_digits=m, num_scenes=4) for m in ("keep", "swap"))
    names = context.class_names
    pair = {NETWORKS[h]: models["context", h, seed] for h in NETWORKS}
    figures = []
    if len({r["seed"] for r in rows}) > 1:
        ablation_figure(rows, out_dir / "paired_gains.png")
        figures.append(("Per seed, the EMAU's gain over the network without it (dots), with the "
                        "mean and its paired 95 % CI", "paired_gains.png"))  # fmt: skip
    swap_figure(pair, context, swapped, 0, out_dir / "swap_test.png")
    receptive_field_figure(*context.raw(0), _fragment_pixel(context), fields["theoretical"],
                           fields["effective"], out_dir / "receptive_field.png", names)  # fmt: skip
    attention_figure(models["context", "emau", seed], *context[0], out_dir / "attention.png",
                     names)  # fmt: skip
    predictions_figure(pair, context, range(len(context)), out_dir / "predictions.png")
    logs = {f"{r['task']} / {NETWORKS[r['head']]}": r["log"] for r in rows if r["seed"] == seed}
    training_curves_figure(logs, out_dir / "loss.png")
    return figures + [
        (f"The swap test on a context scene (seed {seed}): the far digits redrawn as another "
         "class; fragment strips outlined", "swap_test.png"),
        ("The convolutions' receptive field around a fragment pixel of a context scene",
         "receptive_field.png"),
        (f"Attention maps of the EMAU bases for one context scene (seed {seed})", "attention.png"),
        (f"Context scenes: truth and both networks' predictions (seed {seed})", "predictions.png"),
        (f"Training loss of the runs of seed {seed}", "loss.png"),
    ]  # fmt: skip


def _result_lines(rows: list, swap_tests: list, fields: dict) -> list:
    value = {(r["task"], r["head"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    follows = {(t["head"], t["seed"]): t["follows_swap"] for t in swap_tests}
    lines = [
        "**Context task, fragment IoU (the headline)**: the pixels whose class only a far digit "
        "decides. Same backbone and scenes for both networks of a seed.",
        "",
        "| seed | without EMAU | EMANet | gain (points) | mIoU without / with | follows the swap "
        "without / with |",
        "|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        none, emau = value["context", "none", seed], value["context", "emau", seed]
        gain = 100 * (emau["fragment_iou"] - none["fragment_iou"])
        lines.append(f"| {seed} | {none['fragment_iou']:.3f} | {emau['fragment_iou']:.3f} | "
                     f"{gain:+.1f} | {none['miou']:.3f} / {emau['miou']:.3f} | "
                     f"{follows['none', seed]:.3f} / {follows['emau', seed]:.3f} |")  # fmt: skip
    gains = [value["context", "emau", s]["fragment_iou"] - value["context", "none", s]["fragment_iou"]
             for s in seeds]  # fmt: skip
    lines += [
        "",
        f"The EMAU gains fragment IoU on {sum(g > 0 for g in gains)} of {len(seeds)} seeds "
        f"(mean {100 * np.mean(gains):+.1f} points). *Follows the swap*: the share of fragment "
        "pixels whose prediction changes to the far digits' new class when they are redrawn as "
        "another class. Without a global block it is 0 by construction: the far digits lie "
        "beyond the convolutions' reach.",
        "",
        "**Control** (digit scenes, every digit seen whole), mIoU:",
        "",
        "| seed | without EMAU | EMANet |",
        "|---|---|---|",
        *[f"| {s} | {value['control', 'none', s]['miou']:.3f} | "
          f"{value['control', 'emau', s]['miou']:.3f} |" for s in seeds],
        "",
        f"Receptive field of the network without the EMAU: {fields['theoretical']} px "
        f"(theoretical), {fields['effective']} px (effective: the centred square holding 90 % of "
        "the centre pixel's input gradient, after training). In the context scenes every "
        "fragment lies more than 104 px from every full instance, beyond the reach of the "
        "theoretical field (half its side).",
        "",
        "**What three seeds can show, and what they cannot.** The tour's recipe is a shortened "
        "form of the ablation's. For the paired statistics over ten seeds, the other heads "
        "(standard non-local block, image pooling, the EMAU started as the identity) and "
        "their costs, see `results/ablation/` or run `em-tutorial ablate --out runs/ablation`.",
    ]
    return lines


def _write_report(path, equivalence, rows, swap_tests, fields, figures, total_seconds, quick):
    lines = [
        "# em_tutorial tour report",
        "",
        *(["**Quick tour** (`--quick`): a few iterations on a few scenes to check that every "
           "step runs; its numbers mean nothing.", ""] if quick else []),  # fmt: skip
        "## 1. The three stages agree",
        "",
        "EM attention (T=3) on the same input and bases; largest absolute difference from the "
        "NumPy float64 stage:",
        "",
        "| stage | z | mu | x_tilde |",
        "|---|---|---|---|",
    ]
    for stage, gap in equivalence.items():
        lines.append(f"| {stage} | {gap['z']:.1e} | {gap['mu']:.1e} | {gap['x_tilde']:.1e} |")
    lines += [
        "",
        "## 2. When does global context help? EMANet against the same network without its EMAU",
        "",
        "Context task: one digit class per scene, border fragments whose class is decided by a "
        "full digit far away. Control: the digit scenes, where every digit is seen whole. "
        "The control runs come first; both context runs of a seed start from the backbone that "
        "the control run without the EMAU learned, as EMANet's backbone starts from ImageNet "
        "weights.",
        "",
        *_result_lines(rows, swap_tests, fields),
        "",
        "## 3. Figures",
        "",
    ]
    lines += [f"![{caption}]({file})  \n{caption}" for caption, file in figures]
    lines += ["", f"Total tour time: {total_seconds:.0f} s.", ""]
    Path(path).write_text("\n".join(lines))


def _load_models(rows, runs_dir, quick, iterations):
    from .segmentation.ablation import Run, load_run

    models, configs = {}, {}
    for row in rows:
        run = Run(row["task"], row["head"], row["seed"])
        key = (run.task, run.head, run.seed)
        configs[key], models[key] = load_run(run, runs_dir, quick, iterations, TOUR_OVERRIDES)
        row["log"] = str(Path(configs[key].out_dir) / "log.jsonl")
    return models, configs


def run_tour(out_dir="em_tutorial_out", quick=False, iterations=None, seeds=TOUR_SEEDS,
             threads=None, progress=True) -> dict:  # fmt: skip
    """Run the tour; return ``{"out_dir", "report", "equivalence", "runs", "swap_test",
    "receptive_field", "total_seconds"}``.

    Parameters
    ----------
    out_dir : path
        Receives ``report.md``, ``tour.json``, the figures and ``runs/`` (one training folder
        per run, and the ablation files of these runs).
    quick : bool
        Tiny data and a few iterations: checks that every step runs, in seconds.
    iterations : int, optional
        Override the number of training iterations of every run.
    seeds : sequence of int
        The seeds, each trained with and without the EMAU on both tasks (default 0, 1, 2).
    threads : int, optional
        CPU threads of each training; two run side by side in two processes. Default: half
        the CPUs this process may use (at least one).
    progress : bool
        Draw the training progress bar.
    """
    import torch

    from .segmentation.ablation import PROBE_COLUMNS, run_ablation

    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_runs_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("report.md", "tour.json"):  # an earlier, interrupted tour's must not survive
        (out_dir / stale).unlink(missing_ok=True)
    threads = threads or max(1, usable_cpus() // 2)
    torch.set_num_threads(threads)
    seeds = list(seeds)

    print("== 1. The three stages compute the same EM attention ==")
    equivalence = equivalence_check(seeds[0])
    for stage, gap in equivalence.items():
        print(f"  NumPy float64 vs {stage:28s} max |dz| {gap['z']:.1e}  max |dmu| {gap['mu']:.1e}"
              f"  max |dx_tilde| {gap['x_tilde']:.1e}")  # fmt: skip

    print(f"\n== 2. Train EMANet and the same network without its EMAU, seeds {seeds}, on the "
          f"context task and its control, two runs at a time, {threads} thread(s) each ==")  # fmt: skip
    runs_dir = _fresh_runs_dir(out_dir)
    rows = run_ablation(runs_dir, seeds=seeds, tasks=TOUR_TASKS, heads=tuple(NETWORKS),
                        quick=quick, workers=2, progress=progress, command="em-tutorial tour",
                        iterations=iterations, threads=threads,
                        overrides=None if quick else TOUR_OVERRIDES)  # fmt: skip

    print("\n== 3. Validation: fragment IoU per seed, and the swap test ==")
    models, configs = _load_models(rows, runs_dir, quick,
                                   iterations)  # fmt: skip
    # every context run was probed as it finished (the ablation's probe columns)
    swap_tests = [{"head": r["head"], "seed": r["seed"], **{name: r[name] for name in PROBE_COLUMNS}}
                  for r in rows if r["task"] == "context"]  # fmt: skip
    for seed in seeds:
        line = f"  seed {seed}:"
        for head in NETWORKS:
            r = next(x for x in rows if (x["task"], x["head"], x["seed"]) == ("context", head, seed))
            follows = next(t["follows_swap"] for t in swap_tests
                           if (t["head"], t["seed"]) == (head, seed))  # fmt: skip
            line += (f"   {NETWORKS[head]}: fragment IoU {r['fragment_iou']:.3f}, "
                     f"follows swap {follows:.2f}")  # fmt: skip
        print(line)

    print("\n== 4. Figures and report ==")
    fields = _receptive_fields(models["context", "none", seeds[0]],
                               _val_set(configs["context", "none", seeds[0]]))  # fmt: skip
    figures = _draw_figures(models, configs, rows, fields, out_dir)
    total = time.perf_counter() - started
    report = out_dir / "report.md"
    _write_report(report, equivalence, rows, swap_tests, fields, figures, total, quick)
    result = {"equivalence": equivalence, "quick": quick, "runs": rows, "swap_test": swap_tests,
              "receptive_field": fields, "total_seconds": total}  # fmt: skip
    (out_dir / "tour.json").write_text(json.dumps(result, indent=2))

    print(f"\nTour finished in {total:.0f} s. Report and figures are in {out_dir.resolve()}")
    print(f"  {report.resolve()}")
    return {"out_dir": str(out_dir), "report": str(report), **result}


RUNS_MARKER = ".made-by-em-tutorial-tour"
"""Marks ``OUT/runs`` as made by the tour: only such a folder is deleted by the next tour."""


def _check_runs_dir(out_dir: Path) -> None:
    """Refuse, before anything is written, an ``OUT/runs`` that the tour did not make."""
    runs_dir = out_dir / "runs"
    if runs_dir.exists() and any(runs_dir.iterdir()) and not (runs_dir / RUNS_MARKER).exists():
        raise FileExistsError(
            f"{runs_dir} holds files that no tour made; the tour trains from scratch there and "
            "would delete them: choose another --out, or move them away"
        )


def _fresh_runs_dir(out_dir: Path) -> Path:
    """An empty ``OUT/runs``, marked as the tour's (the earlier tour's runs removed)."""
    runs_dir = out_dir / "runs"
    _check_runs_dir(out_dir)
    shutil.rmtree(runs_dir, ignore_errors=True)  # the tour always trains from scratch
    runs_dir.mkdir(parents=True)
    (runs_dir / RUNS_MARKER).write_text("This folder was made by `em-tutorial tour`; the next "
                                        "tour with the same --out replaces it.\n")  # fmt: skip
    return runs_dir


def _val_set(config):
    from .segmentation.config import build_val_set

    return build_val_set(config)
