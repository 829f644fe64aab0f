"""Choose the context task's schedule on held-out seeds (100, 101), never on the main seeds.

    python scripts/pilot_context_recipe.py --out runs/pilot

Trains the backbone sources (control, no attention) of seeds 100 and 101 once, then for every
candidate schedule the context runs without attention and with the EMAU from those backbones,
and prints per run the validation mIoU, the fragment IoU and how much the training loss still
moved over the last fifth of the schedule:

    drift = |mean loss, last tenth - mean loss, ninth tenth| / mean loss, last fifth

The rule, written before the pilot's results: the shorter schedule if every one of its runs
has a drift below 0.05 and its mIoU, averaged over both heads and both seeds, is within 2
points of the longer one's; otherwise the longer. Ten seeds of five heads fit the time we
have at about 400 iterations. The main seeds 0-9 are not touched.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from em_tutorial.segmentation.ablation import read_rows, run_ablation

SEEDS = (100, 101)
HEADS = ("none", "emau")
# The rate: 0.025 at batch 8 is the control recipe's per-image rate (0.05 at batch 16); the
# previous context recipe ran 4x that. Only the schedule's length is chosen here.
CANDIDATES = {
    "lr0.025-600": {"lr": 0.025, "iterations": 600, "warmup_iterations": 50},
    "lr0.025-400": {"lr": 0.025, "iterations": 400, "warmup_iterations": 50},
    # After the main run, exploratory (not in the plan): the heads that start as the identity
    # learned little at 0.025. Two questions on these held-out seeds: is it the start (run
    # lr0.025-600 again with --heads emau_gamma0 nonlocal nonlocal_gamma1: the non-local block
    # started at gamma 1), and does the previous recipe's rate change it (lr0.1-600 with
    # --heads emau_gamma0 nonlocal)?
    "lr0.1-600": {"lr": 0.1, "iterations": 600, "warmup_iterations": 50},
}


def drift(log_path: Path) -> float:
    """Relative change of the training loss between the last two tenths of the schedule."""
    losses = [r["loss"] for r in map(json.loads, log_path.read_text().splitlines())
              if r.get("event") == "train"]  # fmt: skip
    fifth = np.array(losses[-max(2, len(losses) // 5):])
    half = len(fifth) // 2
    return float(abs(fifth[half:].mean() - fifth[:half].mean()) / fifth.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pilot")
    parser.add_argument("--candidates", nargs="+", default=["lr0.025-600", "lr0.025-400"])
    parser.add_argument("--heads", nargs="+", default=list(HEADS))
    args = parser.parse_args()
    out = Path(args.out)
    base = out / "backbones"
    run_ablation(base, seeds=SEEDS, tasks=("control",), heads=("none",), progress=False)
    for name in args.candidates:
        folder = out / name
        if not (folder / "runs").exists():  # share the backbone sources: copy, do not retrain
            shutil.copytree(base / "runs", folder / "runs")
            shutil.copy(base / "ablation.csv", folder / "ablation.csv")
        run_ablation(folder, seeds=SEEDS, tasks=("context",), heads=args.heads, progress=False,
                     overrides={"context": CANDIDATES[name]})  # fmt: skip
        for row in read_rows(folder / "ablation.csv"):
            if row["task"] != "context":
                continue
            log = folder / "runs" / f"context-{row['head']}-seed{row['seed']}" / "log.jsonl"
            print(f"{name:14s} {row['head']:11s} seed {row['seed']}  mIoU {row['miou']:.3f}  "
                  f"fragment IoU {row['fragment_iou']:.3f}  follows swap "
                  f"{row['follows_swap']:.3f}  drift {drift(log):.3f}", flush=True)


if __name__ == "__main__":
    main()
