"""The tour: the whole story on one CPU in about four minutes (``em-tutorial tour``).

1. The three stages agree: EM attention on the same input and bases in NumPy, PyTorch and,
   when a GPU is present, CuPy; the largest differences are printed.
2. The tiny EMANet trains on the embedded digit scenes and, side by side in a second process,
   the same network with the EMAU removed, on the same budget (the ablation); one progress
   bar follows both.
3. Both are evaluated on the validation scenes.
4. Figures (attention maps of the bases, predictions, loss curves) and a short markdown
   report go to the output folder, named at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["TOUR_SETTINGS", "QUICK_SETTINGS", "equivalence_check", "run_tour"]

#: Training settings of the tour (fields of :class:`em_tutorial.segmentation.TrainConfig`).
TOUR_SETTINGS = {"dataset": "digits", "iterations": 3000, "num_scenes": 3000, "val_scenes": 300}
#: ``--quick``: a smoke run of every step in seconds (the numbers mean nothing).
QUICK_SETTINGS = {
    "dataset": "digits",
    "image_size": 48,
    "iterations": 4,
    "num_scenes": 32,
    "val_scenes": 8,
    "batch_size": 4,
    "checkpoint_every": 2,
}


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


def _write_report(path, equivalence, runs, settings, figures, total_seconds):
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
        "## 2. EMANet against the same network without the EMAU",
        "",
        f"Digit scenes: {settings['num_scenes']} training and {settings['val_scenes']} validation "
        f"scenes, {settings['iterations']} iterations of batch {settings['batch_size']} each.",
        "",
        "| network | val mIoU | pixel accuracy | training time (s) | images/s |",
        "|---|---|---|---|---|",
    ]
    for name, summary in runs.items():
        m = summary["metrics"]
        lines.append(
            f"| {name} | {m['miou']:.3f} | {m['pixel_accuracy']:.3f} | "
            f"{summary['train_seconds']:.0f} | {summary['images_per_s']:.0f} |"
        )
    names = list(runs)
    classes = list(runs[names[0]]["metrics"]["iou"])
    lines += ["", "Per-class IoU:", "", "| class | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]  # fmt: skip
    for c in classes:
        cells = []
        for name in names:
            value = runs[name]["metrics"]["iou"][c]
            cells.append("-" if value is None else f"{value:.3f}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "## 3. Figures", ""]
    lines += [f"![{caption}]({file})  \n{caption}" for caption, file in figures]
    lines += ["", f"Total tour time: {total_seconds:.0f} s.", ""]
    Path(path).write_text("\n".join(lines))


def _train_worker(config: dict) -> dict:
    """Train in a worker process; return the JSON-friendly summary (the model stays on disk)."""
    from .segmentation import TrainConfig, train

    summary = train(TrainConfig(**config))
    summary.pop("model")
    return summary


def _last_progress(log_path: Path):
    """(iteration, loss) of the last training line of a ``log.jsonl`` being written, or None."""
    try:
        lines = log_path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            continue
        if record.get("event") == "train":
            return record["iteration"], record["loss"]
    return None


def _train_side_by_side(configs: dict, progress: bool) -> dict:
    """Train several configurations at once, one process each, under one progress bar.

    One process per network with ``threads`` CPU threads each keeps every core busy without
    the threads of one process waiting on each other -- on a 2-core machine that is faster
    than two runs one after the other with two threads each, and far faster when other
    programs compete for the cores.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    context = multiprocessing.get_context("spawn")
    total = sum(config.iterations for config in configs.values())
    with ProcessPoolExecutor(max_workers=len(configs), mp_context=context) as pool, \
            tqdm(total=total, unit="it", desc="training", disable=not progress) as bar:  # fmt: skip
        futures = {name: pool.submit(_train_worker, c.to_dict()) for name, c in configs.items()}
        while not all(future.done() for future in futures.values()):
            time.sleep(1.0)
            done, postfix = 0, {}
            for name, config in configs.items():
                last = _last_progress(Path(config.out_dir) / "log.jsonl")
                if last is not None:
                    done += last[0]
                    postfix[name] = f"{last[0]}it loss {last[1]:.3f}"
            bar.update(done - bar.n)
            bar.set_postfix(postfix, refresh=False)
        bar.update(total - bar.n)
        return {name: future.result() for name, future in futures.items()}


def _tour_configs(settings: dict, seed: int, out_dir: Path, threads: int) -> dict:
    """The two training runs of the tour: EMANet and the same network without its EMAU."""
    from .segmentation import TrainConfig

    networks = {"EMANet": "emau", "without EMAU": "none"}
    configs = {}
    for name, head in networks.items():
        run_dir = out_dir / f"train_{head}"
        shutil.rmtree(run_dir, ignore_errors=True)  # the tour always trains from scratch
        configs[name] = TrainConfig(
            **settings, head=head, seed=seed, out_dir=str(run_dir), threads=threads,
            progress=False, log_every=max(1, min(10, settings["iterations"] // 4)),
        )  # fmt: skip
    return configs


def _draw_figures(configs: dict, runs: dict, out_dir: Path) -> list:
    """Attention maps, predictions and loss curves of the trained runs; (caption, file) pairs."""
    from .segmentation import build_model, build_val_set, load_checkpoint
    from .segmentation.figures import attention_figure, predictions_figure, training_curves_figure

    val_set = build_val_set(configs["EMANet"])
    models = {}
    for name, summary in runs.items():
        models[name] = build_model(configs[name], val_set.num_classes)
        models[name].load_state_dict(load_checkpoint(summary["checkpoint"])["model"])
    image, label = val_set[0]
    attention_figure(models["EMANet"], image, label, out_dir / "attention.png", val_set.class_names)
    predictions_figure(models, val_set, range(min(4, len(val_set))), out_dir / "predictions.png")
    training_curves_figure({name: summary["log"] for name, summary in runs.items()},
                           out_dir / "loss.png")  # fmt: skip
    return [
        ("Attention maps of the EMAU bases for one validation scene", "attention.png"),
        ("Validation scenes: truth and both networks' predictions", "predictions.png"),
        ("Training loss", "loss.png"),
    ]


def run_tour(out_dir="em_tutorial_out", quick=False, iterations=None, seed=0, threads=None,
             progress=True) -> dict:  # fmt: skip
    """Run the tour; return ``{"out_dir", "report", "equivalence", "runs"}``.

    Parameters
    ----------
    out_dir : path
        Receives ``report.md``, the figures and one training folder per network.
    quick : bool
        Tiny data and a few iterations: checks that every step runs, in seconds.
    iterations : int, optional
        Override the number of training iterations of both networks.
    seed : int
    threads : int, optional
        CPU threads of each of the two trainings, which run side by side in two processes;
        default: half the CPUs this process may use (at least one).
    progress : bool
        Draw the training progress bar.
    """
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0))
    threads = threads or max(1, cpus // 2)
    torch.set_num_threads(threads)
    settings = dict(QUICK_SETTINGS if quick else TOUR_SETTINGS)
    if iterations is not None:
        settings["iterations"] = iterations

    print("== 1. The three stages compute the same EM attention ==")
    equivalence = equivalence_check(seed)
    for stage, gap in equivalence.items():
        print(f"  NumPy float64 vs {stage:28s} max |dz| {gap['z']:.1e}  max |dmu| {gap['mu']:.1e}"
              f"  max |dx_tilde| {gap['x_tilde']:.1e}")  # fmt: skip

    configs = _tour_configs(settings, seed, out_dir, threads)
    config = configs["EMANet"]
    print(f"\n== 2. Train EMANet and, side by side, the same network without its EMAU ==\n"
          f"  {config.iterations} iterations of batch {config.batch_size} each on "
          f"{config.num_scenes} digit scenes of {config.image_size}x{config.image_size}, "
          f"{threads} thread(s) per network")  # fmt: skip
    runs = _train_side_by_side(configs, progress)

    print("\n== 3. Validation ==")
    for name, summary in runs.items():
        print(f"  {name:13s} mIoU {summary['metrics']['miou']:.3f}   pixel accuracy "
              f"{summary['metrics']['pixel_accuracy']:.3f}   {summary['train_seconds']:.0f} s "
              f"at {summary['images_per_s']:.0f} images/s")  # fmt: skip

    print("\n== 4. Figures and report ==")
    figures = _draw_figures(configs, runs, out_dir)
    total = time.perf_counter() - started
    report = out_dir / "report.md"
    settings["batch_size"] = config.batch_size
    _write_report(report, equivalence, runs, settings, figures, total)
    (out_dir / "tour.json").write_text(json.dumps(
        {"equivalence": equivalence, "runs": runs, "total_seconds": total}, indent=2))  # fmt: skip

    print(f"\nTour finished in {total:.0f} s. Report and figures are in {out_dir.resolve()}")
    print(f"  {report.resolve()}")
    return {"out_dir": str(out_dir), "report": str(report), "equivalence": equivalence, "runs": runs}
