"""The ``em-tutorial`` command: ``tour``, ``train``, ``eval``, ``ablate`` and ``check-data``.

Every failure is one line on stderr, ``em-tutorial: error: ...``, with exit status 2 for a
command line it cannot parse and 1 for anything that goes wrong while running (set
``EM_TUTORIAL_TRACEBACK=1`` to see the full traceback instead). Ctrl-C (exit status 130) and
SIGTERM (143) stop it the same way: a checkpoint being written is discarded, the last
complete one stays.

This module parses the command line; :mod:`em_tutorial._commands` carries each command out.

Examples
--------
::

    em-tutorial tour                                  # the whole story on a CPU, < 10 minutes
    em-tutorial tour --quick                          # every step in seconds (smoke test)
    em-tutorial train --out runs/digits               # tiny EMANet on the digit scenes
    em-tutorial train --out runs/digits --resume      # continue an interrupted run
    em-tutorial train --dataset voc --data-root ~/data/VOCdevkit/VOC2012 --out runs/voc
    torchrun --nproc_per_node 4 -m em_tutorial.cli train --dataset voc --data-root ...
    em-tutorial eval --checkpoint runs/voc/checkpoint.pt --multi-scale --flip
    em-tutorial check-data --dataset voc --data-root ~/data/VOCdevkit/VOC2012
    python -m em_tutorial --version
    em-tutorial eval --official-weights emanet_voc.pth --data-root ~/data/VOCdevkit/VOC2012
    em-tutorial ablate --out runs/ablation             # the planned experiment, resumable
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

from ._commands import run_command
from ._console import OneLineParser, Terminated, error_line, show_warning, terminate_by_exception

__all__ = ["main", "build_parser"]

_EPILOG = """\
examples:
  em-tutorial tour
  em-tutorial train --out runs/digits
  em-tutorial train --dataset voc --data-root ~/data/VOCdevkit/VOC2012 --out runs/voc
  torchrun --nproc_per_node 4 -m em_tutorial.cli train --dataset voc --data-root ... --out runs/voc
  em-tutorial eval --checkpoint runs/voc/checkpoint.pt --multi-scale --flip
  em-tutorial check-data --dataset voc --data-root ~/data/VOCdevkit/VOC2012
  em-tutorial eval --official-weights emanet_voc.pth --data-root ~/data/VOCdevkit/VOC2012
  em-tutorial ablate --out runs/ablation
"""


def _scales(text):
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be numbers separated by commas, got {text!r}")
    if any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return scales


def _train_scales(text):
    return text if text == "uniform" else _scales(text)


MIN_INPUT_SIDE = 32
"""The smallest scene side and VOC crop the CLI accepts (TrainConfig checks the same,
:data:`em_tutorial.segmentation.config.MIN_INPUT_SIDE`; a test keeps them equal)."""


def _at_least(minimum, reason=""):
    """An argparse type: an integer of at least ``minimum``, refused with ``reason`` below it."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}{reason}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


_POSITIVE = _at_least(1)
_SIDE = _at_least(MIN_INPUT_SIDE, ": the network downsamples by 8, so a smaller input leaves "
                  "it fewer than 4x4 feature cells to segment")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = OneLineParser(
        prog="em-tutorial",
        description="Expectation-Maximization from its equations to EMANet: run the tour, or "
        "train and evaluate EMANet on the embedded digit scenes or on PASCAL VOC 2012.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tour_command(commands)
    _add_train_command(commands)
    _add_eval_command(commands)
    _add_check_data_command(commands)
    _add_ablate_command(commands)
    return parser


def _add_tour_command(commands):
    tour = commands.add_parser(
        "tour",
        help="the whole story on a CPU in under 10 minutes",
        description="Check that NumPy, PyTorch (and CuPy, with a GPU) compute the same EM "
        "attention; for three seeds, train the tiny EMANet and the same network without its "
        "EMAU on the embedded digit scenes (the control) and on the context scenes (from the "
        "same backbone), two at a time; evaluate them (fragment IoU per seed, the swap test); "
        "write figures, report.md and tour.json to OUT. Under 10 minutes on an idle 2-core "
        "CPU. For ten seeds, every head and paired statistics, use `em-tutorial ablate`.",
    )
    tour.add_argument("--out", default="em_tutorial_out", help="output folder (default: %(default)s)")
    tour.add_argument("--quick", action="store_true",
                      help="tiny data, a few iterations: checks every step runs, in seconds")  # fmt: skip
    tour.add_argument("--iterations", type=_POSITIVE, help="training iterations of each network")
    tour.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                      help="seeds, each trained with and without the EMAU on both tasks "
                      "(default: 0 1 2)")  # fmt: skip
    tour.add_argument("--threads", type=_POSITIVE,
                      help="CPU threads of each training; two run side by side "
                      "(default: half the CPUs this process may use)")  # fmt: skip
    tour.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_train_command(commands):
    train = commands.add_parser(
        "train",
        help="train EMANet (digit scenes or PASCAL VOC 2012)",
        description="Train EMANet. Defaults follow the data set: for --dataset voc the official "
        "recipe (ResNet-101, 30k iterations, batch 16, crop 513, SGD lr 9e-3 momentum 0.9, "
        "poly 0.9, weight decay 1e-4); for --dataset digits a tiny EMANet that trains on a "
        "CPU in minutes. OUT receives checkpoint.pt (every --checkpoint-every iterations and at "
        "the end), log.jsonl (loss, lr, speed, final metrics) and summary.json. Launch with "
        "`torchrun --nproc_per_node N -m em_tutorial.cli train ...` for several processes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_arguments(train)
    train.add_argument("--out", default="runs/emanet", help="output folder (default: %(default)s)")
    train.add_argument("--model", choices=["tiny", "resnet50", "resnet101", "resnet152"],
                       help="EMANet backbone (default: tiny for digits, resnet101 for voc)")  # fmt: skip
    train.add_argument("--head", choices=["emau", "emau_gamma0", "nonlocal", "nonlocal_gamma1",
                                          "pooling", "none"],
                       default="emau",
                       help="attention block; 'none' is the ablation (default: %(default)s)")  # fmt: skip
    train.add_argument("--pretrained-backbone", metavar="FILE",
                       help="backbone state_dict to start from (e.g. ImageNet weights)")  # fmt: skip
    # Recipe defaults, written out so that --help needs no torch (a test keeps them equal).
    train.add_argument("--iterations", type=_POSITIVE,
                       help="total iterations of the schedule (default: 3000 for digits, "
                       "600 for context, 30000 for voc)")  # fmt: skip
    train.add_argument("--batch-size", type=_POSITIVE,
                       help="images per iteration, over all processes (default: 16)")  # fmt: skip
    train.add_argument("--crop-size", type=_SIDE, help="VOC training crop (default 513)")
    train.add_argument("--lr", type=float, help="base learning rate (biases get twice it)")
    train.add_argument("--weight-decay", type=float, default=1e-4,
                       help="on convolution weights only (default: %(default)s)")  # fmt: skip
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="initial weights, data order and augmentation (default: %(default)s)")  # fmt: skip
    train.add_argument("--checkpoint-every", type=_POSITIVE, metavar="N",
                       help="iterations between checkpoints (default: 500 for digits, 1000 for "
                       "voc; one is always written at the end)")  # fmt: skip
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--stop-at", type=_POSITIVE, metavar="N",
                       help="stop after iteration N (checkpointed); --resume finishes later")  # fmt: skip
    train.add_argument("--num-workers", type=_at_least(0),
                       help="data-loading processes (default: 0 for the scenes; for voc 4, or the "
                       "CPUs this process may use if fewer)")  # fmt: skip
    train.add_argument("--threads", type=_POSITIVE, help="CPU threads per process")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    train.add_argument("--eval-scales", type=_scales, default=(1.0,), metavar="S1,S2,...",
                       help="scales of the final evaluation (default: 1)")  # fmt: skip
    train.add_argument("--eval-flip", action="store_true", help="add flips to the final evaluation")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    recipe = train.add_argument_group("recipe switches (default: the data set's recipe; the "
                                      "official value for voc)")  # fmt: skip
    recipe.add_argument("--bn-momentum", type=float, help="BatchNorm momentum (official 3e-4)")
    recipe.add_argument("--init", choices=["official", "kaiming"], help="head initialisation")
    recipe.add_argument("--bases-update", choices=["official", "mmseg"],
                        help="the EMAU's moving average of the bases")  # fmt: skip
    recipe.add_argument("--loss-normalization", choices=["all", "labelled", "classes"],
                        help="average the loss over all pixels of the crop (official), the "
                        "labelled ones, or class by class")  # fmt: skip
    recipe.add_argument("--train-scales", type=_train_scales, metavar="S1,S2,...|uniform",
                        help="VOC rescaling factors, or uniform in [0.5, 2]")  # fmt: skip
    recipe.add_argument("--normalization", choices=["official", "imagenet"],
                        help="input (x - mean) / mean (official) or (x - mean) / std")  # fmt: skip
    recipe.add_argument("--val-padding", action=argparse.BooleanOptionalAction,
                        help="pad validation images to 8k + 1 (official)")  # fmt: skip


def _add_eval_command(commands):
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint (mIoU, per-class IoU)",
        description="Evaluate a checkpoint written by `em-tutorial train`, or the authors' "
        "released weights. The model and data settings are read from the checkpoint; "
        "--data-root and --split override them. --official-weights uses the VOC recipe.",
    )
    weights = evaluate.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="checkpoint.pt of a training run")
    weights.add_argument("--official-weights", metavar="FILE",
                         help="a .pth checkpoint of the official EMANet code")  # fmt: skip
    evaluate.add_argument("--model", choices=["resnet50", "resnet101", "resnet152"],
                          default="resnet101",
                          help="backbone of --official-weights (default: %(default)s)")  # fmt: skip
    _add_data_arguments(evaluate, defaults_from_checkpoint=True)
    evaluate.add_argument("--split", help="split to evaluate: a VOC list such as val or train, or "
                          "the digit scenes' train or val (default: the run's validation split)")  # fmt: skip
    evaluate.add_argument("--scales", type=_scales, default=(1.0,), metavar="S1,S2,...",
                          help="inference scales, e.g. 0.5,0.75,1,1.25,1.5,1.75")  # fmt: skip
    evaluate.add_argument("--multi-scale", action="store_true",
                          help="the VOC scales 0.5,0.75,1,1.25,1.5,1.75")  # fmt: skip
    evaluate.add_argument("--flip", action="store_true", help="average with mirrored images")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--output", metavar="JSON", help="also write the metrics to this file")
    evaluate.add_argument("--figure", metavar="PNG",
                          help="save the attention maps of the first image here")  # fmt: skip
    evaluate.add_argument("--no-progress", action="store_true")


def _add_check_data_command(commands):
    check = commands.add_parser(
        "check-data",
        help="read a whole VOC split in advance and list every bad file",
        description="Read every image and label of PASCAL VOC splits as training would, and list "
        "each missing or unreadable file, size mismatch and label value that is neither a class "
        "index (0..20) nor the ignore value 255. Exit status 1 when anything is wrong. (The "
        "digit scenes are generated, and checked as they are drawn.)",
    )
    check.add_argument("--dataset", choices=["voc"], default="voc", help="(default: %(default)s)")
    check.add_argument("--data-root", metavar="DIR", required=True,
                       help="PASCAL VOC folder (VOCdevkit/VOC2012 or a parent)")  # fmt: skip
    check.add_argument("--split", action="append", metavar="NAME",
                       help="a list in ImageSets/Segmentation; repeat for several (default: the "
                       "training list, trainaug if present else train, and val)")  # fmt: skip
    check.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_data_arguments(parser, defaults_from_checkpoint=False):
    default = None if defaults_from_checkpoint else "digits"
    parser.add_argument("--dataset", choices=["digits", "context", "voc"], default=default,
                        help="embedded digit or context scenes (no download), or PASCAL VOC 2012"
                        + ("" if defaults_from_checkpoint else " (default: %(default)s)"))  # fmt: skip
    parser.add_argument("--data-root", metavar="DIR",
                        help="PASCAL VOC folder holding JPEGImages/, SegmentationClass/, "
                        "ImageSets/Segmentation/ (VOCdevkit/VOC2012 or a parent)")  # fmt: skip
    if not defaults_from_checkpoint:
        parser.add_argument("--train-split", metavar="NAME",
                            help="VOC training list (default: trainaug if present, else train)")  # fmt: skip
        parser.add_argument("--val-split", default="val", metavar="NAME",
                            help="VOC validation list (default: %(default)s)")  # fmt: skip
        parser.add_argument("--num-scenes", type=_POSITIVE,
                            help="scenes for training (default: 3000 digits, 1000 context)")  # fmt: skip
        parser.add_argument("--val-scenes", type=_POSITIVE,
                            help="scenes for validation (default: 300 digits, 300 context)")  # fmt: skip
        parser.add_argument("--image-size", type=_SIDE,
                            help="side of a scene in pixels (default: 96 digits, 192 context)")  # fmt: skip


def _add_ablate_command(commands):
    from .segmentation.ablation import ABLATION_TASKS, HEADS

    ablate = commands.add_parser(
        "ablate",
        help="the seeded ablation over heads on the context task and its control",
        description="The planned experiment (results/ablation/PLAN.md): for seeds 0..N-1, the "
        "tiny EMANet without attention and with the EMAU on the digit scenes (the control), then "
        "every head (none, emau, emau_gamma0, nonlocal, pooling) on the context scenes, from the "
        "backbone of that seed's control run without attention; two runs at a time. Writes "
        "OUT/ablation.csv (a row per finished run; started again, the command runs only the "
        "missing runs), OUT/ablation.md (per-seed tables, paired statistics, the decision "
        "rules, the swap test, the heads' costs) and OUT/ablation.png (paired differences). "
        "Defaults: 70 minutes on an idle 2-core CPU (measured 2026-12-06).",
    )
    ablate.add_argument("--out", required=True, help="output folder")
    ablate.add_argument("--seeds", type=_POSITIVE, default=10,
                        help="seeds per task and head (default: %(default)s)")  # fmt: skip
    ablate.add_argument("--tasks", nargs="+", choices=list(ABLATION_TASKS),
                        default=list(ABLATION_TASKS), help="default: all")  # fmt: skip
    ablate.add_argument("--heads", nargs="+", choices=list(HEADS),
                        help="heads of every task (default: all on context; none and emau on "
                        "the control)")  # fmt: skip
    ablate.add_argument("--quick", action="store_true",
                        help="tiny runs that check every step in seconds (numbers mean nothing)")  # fmt: skip
    ablate.add_argument("--iterations", type=_POSITIVE,
                        help="override every task's iterations, for a shorter pilot")  # fmt: skip
    ablate.add_argument("--workers", type=_POSITIVE, help="runs at a time (default: 2)")
    ablate.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_stop_at(parser, args):
    """--stop-at must fall within the schedule (--iterations, or the recipe's)."""
    if args.stop_at is None:
        return
    iterations = args.iterations
    if iterations is None:
        from .segmentation.config import RECIPES

        iterations = RECIPES[args.dataset]["iterations"]
    if args.stop_at > iterations:
        parser.error(f"--stop-at {args.stop_at} lies beyond the end of the schedule, iteration "
                     f"{iterations} (--iterations): the run would simply finish")  # fmt: skip


def _why_not_creatable(path: Path):
    """Why ``path`` cannot be created (its nearest existing folder is a file or read-only),
    or None."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"the folder {ancestor} is not writable"
    return None


def _check_outputs(parser, args):
    """Refuse, before any work, an output that could not be written at the end."""
    folders = [("--out", args.out)] if args.command in ("tour", "train", "ablate") else []
    files = [(flag, getattr(args, name)) for flag, name in (("--output", "output"),
                                                          ("--figure", "figure"))
             if args.command == "eval" and getattr(args, name)]  # fmt: skip
    for flag, value in folders + files:
        path = Path(value).expanduser()
        if flag == "--out" and path.exists() and not path.is_dir():
            parser.error(f"--out {value} is a file; it must name a folder")
        if flag != "--out" and path.is_dir():
            parser.error(f"{flag} {value} is a folder; it must name a file")
        if path.exists():
            problem = None if os.access(path, os.W_OK) else f"{path} is not writable"
        else:
            problem = _why_not_creatable(path)
        if problem:
            parser.error(f"{flag} {value} cannot be written: {problem}")


def main(argv=None) -> int:
    """Entry point of the ``em-tutorial`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.dataset == "voc" and not args.data_root:
        parser.exit(2, "em-tutorial: error: --dataset voc needs --data-root, the PASCAL VOC 2012 "
                    "folder (see `em-tutorial train --help`)\n")  # fmt: skip
    command_parser = parser._subparsers._group_actions[0].choices[args.command]
    if args.command == "train":
        _check_stop_at(command_parser, args)
    _check_outputs(command_parser, args)
    try:
        with warnings.catch_warnings(), terminate_by_exception():
            warnings.showwarning = show_warning
            run_command(args, argv)
    except KeyboardInterrupt:
        print("em-tutorial: error: interrupted", file=sys.stderr)
        return 130
    except Terminated:  # as for Ctrl-C: a checkpoint being written was discarded, the last kept
        print("em-tutorial: error: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as error:
        if os.environ.get("EM_TUTORIAL_TRACEBACK"):
            raise
        print(error_line(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
