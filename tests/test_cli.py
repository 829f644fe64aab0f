"""The em-tutorial command: help, the quick tour, train then eval, clear errors."""

import json
import subprocess
import sys

import pytest
import torch

import em_tutorial
from em_tutorial.cli import build_parser, main

DIGITS_SMALL = ["--dataset", "digits", "--image-size", "32", "--num-scenes", "8", "--val-scenes", "4"]


def test_console_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "em_tutorial.cli", "--help"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0
    for command in ("tour", "train", "eval", "check-data", "ablate"):
        assert command in result.stdout


def test_python_dash_m_em_tutorial_and_version():
    result = subprocess.run([sys.executable, "-m", "em_tutorial", "--version"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"em-tutorial {em_tutorial.__version__}\n")
    result = subprocess.run([sys.executable, "-m", "em_tutorial", "train", "--lr", "fast"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == ("em-tutorial: error: argument --lr: invalid float value: 'fast' "
                             "(see `em-tutorial train --help`)\n")  # fmt: skip


def test_train_help_shows_every_default():
    from em_tutorial.segmentation import RECIPES

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    help_text = " ".join(help_text.split())  # argparse wraps lines anywhere
    digits, voc = RECIPES["digits"], RECIPES["voc"]
    context = RECIPES["context"]
    assert (f"(default: {digits['iterations']} for digits, {context['iterations']} for context, "
            f"{voc['iterations']} for voc)" in help_text)  # fmt: skip
    for name in ("num_scenes", "val_scenes", "image_size"):
        assert f"{digits[name]} digits, {context[name]} context)" in help_text, name
    assert digits["batch_size"] == voc["batch_size"] and f"(default: {voc['batch_size']})" in help_text
    assert (f"(default: {digits['checkpoint_every']} for digits, {voc['checkpoint_every']} for voc;"
            in help_text)  # fmt: skip
    for flag, default in (("--seed", 0), ("--momentum", 0.9), ("--weight-decay", 0.0001)):
        after = help_text.split(flag, 2)[-1]  # the flag's own entry, past the usage line
        assert f"(default: {default})" in after.split(" --", 1)[0], flag


@pytest.mark.parametrize(
    "command, flags",
    [
        ("tour", ["--quick", "--out", "--iterations", "--seeds", "--threads", "--no-progress"]),
        ("train", ["--dataset", "--data-root", "--resume", "--stop-at", "--lr", "--batch-size",
                   "--eval-scales", "--device"]),  # fmt: skip
        ("eval", ["--checkpoint", "--scales", "--multi-scale", "--flip", "--figure", "--output"]),
        ("ablate", ["--out", "--seeds", "--tasks", "--heads", "--quick", "--iterations",
                    "--workers", "--no-progress"]),  # fmt: skip
    ],
)
def test_each_command_help_lists_its_flags(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: em-tutorial {command}")
    for flag in flags:
        assert flag in text, flag


def test_flags_reach_the_parsed_settings():
    args = build_parser().parse_args(
        ["train", "--lr", "0.1", "--stop-at", "5", "--resume", "--eval-scales", "0.5,1", "--no-progress"]
    )
    assert (args.command, args.lr, args.stop_at, args.resume) == ("train", 0.1, 5, True)
    assert args.eval_scales == (0.5, 1.0) and args.no_progress
    assert (args.dataset, args.model, args.iterations) == ("digits", None, None)  # recipe fills them
    args = build_parser().parse_args(["ablate", "--out", "o", "--tasks", "context", "--heads",
                                      "none", "pooling", "--seeds", "2"])  # fmt: skip
    assert (args.tasks, args.heads, args.seeds, args.quick) == (["context"], ["none", "pooling"],
                                                                2, False)  # fmt: skip
    args = build_parser().parse_args(["eval", "--checkpoint", "c.pt", "--multi-scale"])
    assert (args.checkpoint, args.multi_scale, args.flip, args.dataset) == ("c.pt", True, False, None)


@pytest.mark.parametrize(
    "argv",
    [[], ["fly"], ["eval"], ["train", "--model", "vgg"], ["tour", "--iterations", "many"],
     ["eval", "--checkpoint", "c.pt", "--scales", "0,1"], ["train", "--dataset", "voc"],
     ["check-data"], ["ablate", "--out", "o", "--heads", "aspp"], ["ablate", "--quick"]],  # fmt: skip
    ids=["no command", "unknown command", "eval without checkpoint", "unknown model",
         "non-integer iterations", "zero scale", "voc without data root",
         "check-data without data root", "unknown head", "ablate without out"],  # fmt: skip
)
def test_bad_command_lines_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("em-tutorial: error: ") and error.count("\n") == 1
    assert error.endswith("--help`)\n")


@pytest.mark.slow  # two training processes start (each imports torch), then figures are drawn
def test_quick_tour_writes_report_and_figures(tmp_path, capsys):
    out = tmp_path / "tour"
    assert main(["tour", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "PyTorch float64" in printed and str(out.resolve()) in printed
    for name in ("report.md", "attention.png", "predictions.png", "loss.png", "tour.json",
                 "receptive_field.png", "swap_test.png", "paired_gains.png", "runs/ablation.csv"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "tour.json").read_text())
    assert result["equivalence"]["PyTorch float64"]["x_tilde"] < 1e-12
    assert result["quick"] is True
    assert {(r["task"], r["head"], r["seed"]) for r in result["runs"]} == {
        (task, head, seed) for task in ("context", "control") for head in ("emau", "none")
        for seed in (0, 1, 2)}  # fmt: skip
    swaps = {(t["head"], t["seed"]): t for t in result["swap_test"]}
    assert set(swaps) == {(head, seed) for head in ("emau", "none") for seed in (0, 1, 2)}
    for seed in (0, 1, 2):  # by construction: beyond the convolutions' reach
        assert swaps["none", seed]["follows_swap"] == 0.0
        assert swaps["none", seed]["unchanged_by_swap"] == 1.0
    assert result["receptive_field"]["theoretical"] > result["receptive_field"]["effective"] > 1
    report = (out / "report.md").read_text()
    assert "EMANet" in report and "without EMAU" in report and "attention.png" in report
    assert "em-tutorial ablate" in report and "fragment IoU" in report
    assert "Quick tour" in report


def test_train_then_eval_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *DIGITS_SMALL, "--iterations", "2", "--batch-size", "4", "--no-progress",
            "--threads", "1", "--out", str(run)]  # fmt: skip
    assert main(args) == 0
    assert "validation mIoU" in capsys.readouterr().out
    metrics_file = tmp_path / "not_yet" / "metrics.json"  # the folder is created
    figure = tmp_path / "attention.png"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scales", "0.75,1",
                 "--flip", "--no-progress", "--output", str(metrics_file),
                 "--figure", str(figure)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "background" in printed
    metrics = json.loads(metrics_file.read_text())
    assert metrics["scales"] == [0.75, 1.0] and metrics["flip"] is True
    assert 0.0 <= metrics["miou"] <= 1.0
    assert figure.stat().st_size > 0


def test_errors_name_the_problem(tmp_path, capsys):
    missing = tmp_path / "no_voc_here"
    assert main(["train", "--dataset", "voc", "--data-root", str(missing), "--out",
                 str(tmp_path / "x")]) == 1  # fmt: skip
    assert f"does not exist: {missing}" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", *DIGITS_SMALL, "--out", str(tmp_path / "y"), "--resume"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(corrupt)]) == 1
    assert f"cannot read checkpoint {corrupt}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "c.pt", "--scales", "1,zero"])


def _one_error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.startswith("em-tutorial: error: ") and error.count("\n") == 1, error
    return error


def _train_one_iteration(run, capsys):
    """A one-iteration digit-scene run in ``run`` (its output swallowed); returns ``run``."""
    assert main(["train", *DIGITS_SMALL, "--iterations", "1", "--batch-size", "4",
                 "--no-progress", "--threads", "1", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    return run


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["train", *DIGITS_SMALL, "--device", "cuda", "--out", str(tmp_path / "r")]) == 1
    assert "torch sees no CUDA GPU" in _one_error_line(capsys)


def test_untrusted_checkpoints_are_one_line(tmp_path, capsys):
    run = _train_one_iteration(tmp_path / "run", capsys)
    checkpoint = run / "checkpoint.pt"
    state_dict = tmp_path / "weights.pt"
    torch.save(torch.load(checkpoint, weights_only=True)["model"], state_dict)
    assert main(["eval", "--checkpoint", str(state_dict)]) == 1
    assert f"{state_dict}: not an em-tutorial checkpoint (a PyTorch file holding the keys" in \
        _one_error_line(capsys)
    raw = bytearray(checkpoint.read_bytes())
    weight = max(torch.load(checkpoint, weights_only=True)["model"].values(), key=torch.numel)
    start = raw.find(weight.numpy().tobytes())
    raw[start + 8 : start + 28] = bytes(b ^ 0x5A for b in raw[start + 8 : start + 28])
    checkpoint.write_bytes(raw)
    for argv in (["eval", "--checkpoint", str(checkpoint)],
                 ["train", *DIGITS_SMALL, "--iterations", "2", "--batch-size", "4", "--resume",
                  "--out", str(run)]):  # fmt: skip
        assert main(argv) == 1
        assert "does not match its SHA-256 checksum" in _one_error_line(capsys)


def test_eval_split_is_honoured_or_refused_on_the_digit_scenes(tmp_path, capsys):
    run = _train_one_iteration(tmp_path / "run", capsys)
    checkpoint = str(run / "checkpoint.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--split", "train", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("digits train: 8 images")  # the 8 training scenes
    assert main(["eval", "--checkpoint", checkpoint, "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("digits val: 4 images")
    assert main(["eval", "--checkpoint", checkpoint, "--split", "bogus"]) == 1
    assert ("two splits, 'train' (8 scenes) and 'val' (4 scenes); val_split 'bogus'"
            in _one_error_line(capsys))  # fmt: skip


def test_a_checkpoint_without_checksum_is_evaluated_with_a_one_line_warning(tmp_path, capsys):
    run = _train_one_iteration(tmp_path / "run", capsys)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["sha256"], state["format"]  # as written before checksums existed
    torch.save(state, run / "checkpoint.pt")
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--no-progress"]) == 0
    assert capsys.readouterr().err == (f"em-tutorial: warning: checkpoint {run / 'checkpoint.pt'} "
                                       "has no checksum (written by an older em-tutorial); its "
                                       "content cannot be verified\n")  # fmt: skip


def test_tour_refuses_a_runs_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "proj" / "runs" / "digits" / "checkpoint.pt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own checkpoint")
    (tmp_path / "proj" / "report.md").write_text("an earlier report")
    assert main(["tour", "--quick", "--out", str(tmp_path / "proj"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("em-tutorial: error: ") and error.count("\n") == 1
    assert "no tour made" in error
    assert mine.read_bytes() == b"the user's own checkpoint"  # nothing deleted
    assert (tmp_path / "proj" / "report.md").exists()  # nor anything else touched
