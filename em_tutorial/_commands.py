"""What each ``em-tutorial`` subcommand does, once :mod:`em_tutorial.cli` has parsed it.

The parser and the one-line error reporting live in :mod:`em_tutorial.cli`; torch and the
application are imported here only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def run_command(args, argv=None):
    """Carry out the parsed subcommand ``args.command``; ``argv`` as given to ``main``."""
    if args.command == "tour":
        from .tour import run_tour

        run_tour(args.out, quick=args.quick, iterations=args.iterations, seeds=args.seeds,
                 threads=args.threads, progress=not args.no_progress)  # fmt: skip
    elif args.command == "train":
        _run_train(args)
    elif args.command == "check-data":
        _run_check_data(args)
    elif args.command == "ablate":
        args.argv = None if argv is None else list(argv)[1:]
        _run_ablate(args)
    else:
        _run_eval(args)


def _run_ablate(args):
    from .segmentation.ablation import run_ablation

    command = "em-tutorial ablate " + " ".join(sys.argv[2:] if args.argv is None else args.argv)
    run_ablation(args.out, args.seeds, args.tasks, args.heads, quick=args.quick,
                 workers=args.workers, progress=not args.no_progress, command=command,
                 iterations=args.iterations)  # fmt: skip
    print(f"ablation: {os.path.join(args.out, 'ablation.md')}")


def _model_switches(args):
    """The recipe's model_kwargs with --bn-momentum, --init, --bases-update on top (or None)."""
    from .segmentation import RECIPES

    flags = {"bn_momentum": args.bn_momentum, "init": args.init, "bases_update": args.bases_update}
    given = {name: value for name, value in flags.items() if value is not None}
    return {**RECIPES[args.dataset]["model_kwargs"], **given} if given else None


def _run_train(args):
    from .segmentation import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        train_split=args.train_split,
        val_split=args.val_split,
        num_scenes=args.num_scenes,
        val_scenes=args.val_scenes,
        image_size=args.image_size,
        model=args.model,
        head=args.head,
        model_kwargs=_model_switches(args),
        pretrained_backbone=args.pretrained_backbone,
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        loss_normalization=args.loss_normalization,
        train_scales=args.train_scales,
        normalization=args.normalization,
        val_padding=args.val_padding,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        out_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_at=args.stop_at,
        num_workers=args.num_workers,
        threads=args.threads,
        device=args.device,
        eval_scales=args.eval_scales,
        eval_flip=args.eval_flip,
        progress=not args.no_progress,
    )
    summary = train(config)
    summary.pop("model")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, the first process reports
        return
    if summary["metrics"] is not None:
        print(f"validation mIoU {_score(summary['metrics']['miou'])}")
    print(f"checkpoint: {summary['checkpoint']}\nlog: {summary['log']}")


def _run_eval(args):
    from .segmentation import (
        VOC_EVAL_SCALES,
        TrainConfig,
        build_model,
        build_val_set,
        evaluate,
        load_checkpoint,
        resolve_device,
    )
    from .segmentation.checkpoint import load_model_state
    from .segmentation.runlog import write_json

    if args.official_weights:  # the VOC recipe: the official normalisation and padding
        saved = {"dataset": "voc", "model": args.model}
    else:
        state = load_checkpoint(args.checkpoint)
        saved = dict(state["config"])
        saved.setdefault("normalization", "imagenet")  # written before the official one existed
    saved.update(resume=False, progress=False, stop_at=None)
    for name in ("dataset", "data_root"):
        if getattr(args, name):
            saved[name] = getattr(args, name)
    if args.split:
        saved["val_split"] = args.split
    config = TrainConfig(**saved)
    device = resolve_device(args.device)
    dataset = build_val_set(config)
    if args.official_weights:  # emanet_resnet101(num_classes, weights=FILE) and its siblings
        config.model_kwargs["weights"] = args.official_weights
    model = build_model(config, dataset.num_classes)
    if not args.official_weights:
        load_model_state(model, state["model"], f"checkpoint {args.checkpoint}")
    model.to(device)
    scales = VOC_EVAL_SCALES if args.multi_scale else args.scales
    matrix = evaluate(model, dataset, scales, args.flip, batch_size=1, device=device,
                      progress=not args.no_progress)  # fmt: skip
    metrics = matrix.summary(dataset.class_names)
    print(f"{config.dataset} {config.val_split}: {len(dataset)} images, scales {scales}, "
          f"flip {args.flip}")  # fmt: skip
    for name, iou in metrics["iou"].items():
        print(f"  {name:>12s}  IoU {_score(iou)}")
    print(f"mIoU {_score(metrics['miou'])}   pixel accuracy {_score(metrics['pixel_accuracy'])}")
    if args.output:  # its folder was checked before the evaluation began
        Path(args.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, {"checkpoint": args.checkpoint or args.official_weights,
                                 "scales": list(scales), "flip": args.flip,
                                 **metrics})  # fmt: skip
    if args.figure:
        from .segmentation.figures import attention_figure

        attention_figure(model, *dataset[0], args.figure, dataset.class_names,
                         normalization=config.normalization)  # fmt: skip
        print(f"attention maps: {args.figure}")


def _run_check_data(args):
    from .segmentation.data import VOCSegmentation, default_train_split, find_bad_samples

    splits = args.split or [default_train_split(args.data_root), "val"]
    failed = []
    for split in splits:
        try:  # every file of the split read, the missing ones reported among the bad
            dataset = VOCSegmentation(args.data_root, split, missing_ok=True)
            problems = find_bad_samples(dataset, not args.no_progress, f"check {split}",
                                        problems_of=dataset.sample_problems)  # fmt: skip
        except (OSError, ValueError) as error:  # no split list, or no VOC folder at all
            dataset, problems = None, [str(error)]
        for problem in problems:
            print(f"{split}: {problem}")
        checked = f"{len(dataset)} images and labels read" if dataset else "not read"
        print(f"{split}: {checked}, " + (f"{len(problems)} problem(s)" if problems else "no problems"))
        failed += [split] * bool(problems)
    if failed:
        raise ValueError(f"bad data in the split(s) {', '.join(failed)} of {args.data_root} "
                         "(each problem listed above)")  # fmt: skip


def _score(value) -> str:
    """A metric with four decimals, or "-" where it is undefined (None)."""
    return "-" if value is None else f"{value:.4f}"
