"""The tour: the whole story on one CPU in under ten minutes (``em-tutorial tour``).

1. The three stages agree: EM attention on the same input and bases in NumPy, PyTorch and,
   when a GPU is present, CuPy; the largest differences are printed.
2. The tiny EMANet and the same network without its EMAU train, two runs at a time, on the
   **digit** scenes (the control, where the convolutions see every digit whole) and then on
   the **context** scenes (a fragment's class is decided by a digit beyond the convolutions'
   reach), starting from the backbone of the control run without the EMAU: one seed of
   :mod:`em_tutorial.segmentation.ablation`.
3. All four are evaluated on their validation scenes; the context task also by the IoU of
   its fragments alone.
4. Figures (the receptive field on a scene, attention maps, predictions, loss curves) and a
   short markdown report go to the output folder, named at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["NETWORKS", "TOUR_TASKS", "equivalence_check", "run_tour"]

#: The tour's runs: both tasks, with and without the EMAU, trained with the settings of
#: :data:`em_tutorial.segmentation.ablation.ABLATION_TASKS` (``--quick``: ``QUICK_TASKS``).
TOUR_TASKS = ("context", "control")
NETWORKS = {"emau": "EMANet", "none": "without EMAU"}


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


def _draw_figures(models: dict, val_sets: dict, rows: list, fields: dict, out_dir: Path) -> list:
    """Receptive field, attention maps, predictions and loss curves; (caption, file) pairs."""
    from .segmentation.figures import (
        attention_figure,
        predictions_figure,
        receptive_field_figure,
        training_curves_figure,
    )

    context = val_sets["context"]
    names = context.class_names
    receptive_field_figure(*context.raw(0), _fragment_pixel(context), fields["theoretical"],
                           fields["effective"], out_dir / "receptive_field.png", names)  # fmt: skip
    attention_figure(models["context", "emau"], *context[0], out_dir / "attention.png", names)
    predictions_figure({NETWORKS[h]: models["context", h] for h in NETWORKS}, context,
                       range(min(4, len(context))), out_dir / "predictions.png")  # fmt: skip
    logs = {f"{r['task']} / {NETWORKS[r['head']]}": r["log"] for r in rows}
    training_curves_figure(logs, out_dir / "loss.png")
    return [
        ("The convolutions' receptive field around a fragment pixel of a context scene",
         "receptive_field.png"),
        ("Attention maps of the EMAU bases for one context scene", "attention.png"),
        ("Context scenes: truth and both networks' predictions", "predictions.png"),
        ("Training loss of the four runs", "loss.png"),
    ]  # fmt: skip


def _result_lines(rows: list, fields: dict) -> list:
    lines = [
        "| task | network | val mIoU | fragment IoU | pixel accuracy | training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        fragment = "-" if r["fragment_iou"] is None else f"{r['fragment_iou']:.3f}"
        lines.append(f"| {r['task']} | {NETWORKS[r['head']]} | {r['miou']:.3f} | {fragment} | "
                     f"{r['pixel_accuracy']:.3f} | {r['train_seconds']:.0f} |")  # fmt: skip
    return lines + [
        "",
        f"Receptive field of the network without the EMAU: {fields['theoretical']} px "
        f"(theoretical), {fields['effective']} px (effective: the centred square holding 90 % of "
        "the centre pixel's input gradient, after training). In the context scenes every "
        "fragment lies more than 104 px from every full instance, beyond the reach of the "
        "theoretical field (half its side): the convolutions cannot see the digit that "
        "decides a fragment's class.",
        "",
        "**What one seed can show, and what it cannot.** This is one training run per network "
        "and task. It shows the pipeline end to end, and how far apart the networks are for this "
        "seed. It cannot say whether a difference is larger than the spread between seeds: "
        "for that, run `em-tutorial ablate --out runs/ablation` (every head, both tasks, three "
        "seeds, mean ± sd, with the heads' costs).",
    ]


def _write_report(path, equivalence, rows, fields, figures, total_seconds):
    lines = [
        "# em_tutorial tour report",
        "",
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
        "Fragment IoU: mean IoU of the digit classes on the fragments' pixels alone. The "
        "control runs come first; both context runs start from the backbone that the control "
        "run without the EMAU learned, as EMANet's backbone starts from ImageNet weights.",
        "",
        *_result_lines(rows, fields),
        "",
        "## 3. Figures",
        "",
    ]
    lines += [f"![{caption}]({file})  \n{caption}" for caption, file in figures]
    lines += ["", f"Total tour time: {total_seconds:.0f} s.", ""]
    Path(path).write_text("\n".join(lines))


def _load_models(rows, runs_dir, quick, iterations):
    from .segmentation.ablation import Run, load_run

    models, val_sets = {}, {}
    for row in rows:
        run = Run(row["task"], row["head"], row["seed"])
        config, models[run.task, run.head] = load_run(run, runs_dir, quick, iterations)
        row["log"] = str(Path(config.out_dir) / "log.jsonl")
        if run.task not in val_sets:
            from .segmentation import build_val_set

            val_sets[run.task] = build_val_set(config)
    return models, val_sets


def run_tour(out_dir="em_tutorial_out", quick=False, iterations=None, seed=0, threads=None,
             progress=True) -> dict:  # fmt: skip
    """Run the tour; return ``{"out_dir", "report", "equivalence", "runs", "receptive_field"}``.

    Parameters
    ----------
    out_dir : path
        Receives ``report.md``, the figures and ``runs/`` (one training folder per run, and
        the one-seed ``ablation.csv`` / ``.md`` / ``.png``).
    quick : bool
        Tiny data and a few iterations: checks that every step runs, in seconds.
    iterations : int, optional
        Override the number of training iterations of every run.
    seed : int
    threads : int, optional
        CPU threads of each training; two run side by side in two processes. Default: half
        the CPUs this process may use (at least one).
    progress : bool
        Draw the training progress bar.
    """
    import torch

    from .segmentation.ablation import run_ablation

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, len(os.sched_getaffinity(0)) // 2)
    torch.set_num_threads(threads)

    print("== 1. The three stages compute the same EM attention ==")
    equivalence = equivalence_check(seed)
    for stage, gap in equivalence.items():
        print(f"  NumPy float64 vs {stage:28s} max |dz| {gap['z']:.1e}  max |dmu| {gap['mu']:.1e}"
              f"  max |dx_tilde| {gap['x_tilde']:.1e}")  # fmt: skip

    print("\n== 2. Train EMANet and the same network without its EMAU, on the context task "
          f"and its control, two runs at a time, {threads} thread(s) each ==")  # fmt: skip
    runs_dir = out_dir / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)  # the tour always trains from scratch
    rows = run_ablation(runs_dir, seeds=[seed], tasks=TOUR_TASKS, heads=tuple(NETWORKS),
                        quick=quick, workers=2, progress=progress, command="em-tutorial tour",
                        iterations=iterations, threads=threads)  # fmt: skip

    print("\n== 3. Validation ==")
    for r in rows:
        fragment = "" if r["fragment_iou"] is None else f"   fragment IoU {r['fragment_iou']:.3f}"
        print(f"  {r['task']:8s} {NETWORKS[r['head']]:13s} mIoU {r['miou']:.3f}{fragment}   "
              f"{r['train_seconds']:.0f} s")  # fmt: skip

    print("\n== 4. Figures and report ==")
    models, val_sets = _load_models(rows, runs_dir, quick, iterations)
    fields = _receptive_fields(models["context", "none"], val_sets["context"])
    figures = _draw_figures(models, val_sets, rows, fields, out_dir)
    total = time.perf_counter() - started
    report = out_dir / "report.md"
    _write_report(report, equivalence, rows, fields, figures, total)
    result = {"equivalence": equivalence, "runs": rows, "receptive_field": fields,
              "total_seconds": total}  # fmt: skip
    (out_dir / "tour.json").write_text(json.dumps(result, indent=2))

    print(f"\nTour finished in {total:.0f} s. Report and figures are in {out_dir.resolve()}")
    print(f"  {report.resolve()}")
    return {"out_dir": str(out_dir), "report": str(report), **result}
