"""Flags refused at parse time, in one line and before any work: numbers out of range, a stop
beyond the schedule, outputs that could not be written at the end."""

import pytest

from em_tutorial import cli
from em_tutorial.cli import main
from em_tutorial.segmentation import TrainConfig
from em_tutorial.segmentation import config as config_module


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("em-tutorial: error: ") and error.count("\n") == 1, error
    return error


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--stop-at", "5", "--iterations", "4"],
         "--stop-at 5 lies beyond the end of the schedule, iteration 4"),
        (["train", "--stop-at", "3001"], "beyond the end of the schedule, iteration 3000"),
        (["train", "--dataset", "context", "--stop-at", "601"], "iteration 600"),
        (["train", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["tour", "--threads", "0"], "argument --threads: must be at least 1, got 0"),
        (["train", "--image-size", "4"],
         "argument --image-size: must be at least 32, got 4: the network downsamples by 8"),
        (["train", "--dataset", "voc", "--data-root", "v", "--crop-size", "1"],
         "argument --crop-size: must be at least 32, got 1: the network downsamples by 8"),
        (["train", "--num-workers", "-1"], "argument --num-workers: must be at least 0"),
        (["train", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["ablate", "--out", "o", "--workers", "0"], "argument --workers: must be at least 1"),
    ],  # fmt: skip
    ids=["stop-at beyond iterations", "stop-at beyond the recipe", "stop-at beyond context's",
         "train threads 0", "tour threads 0", "image size 4", "crop size 1", "negative workers",
         "batch 0", "ablate workers 0"],  # fmt: skip
)
def test_numbers_out_of_range_are_refused_at_parse_time(argv, expected, capsys):
    assert expected in _usage_error(argv, capsys)


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("the user's notes")
    for command in (["train"], ["tour"], ["ablate"]):
        error = _usage_error([*command, "--out", str(a_file)], capsys)
        assert f"--out {a_file} is a file; it must name a folder" in error
    # The checkpoint does not exist: an error about the output proves it came first.
    missing = str(tmp_path / "absent.pt")
    error = _usage_error(["eval", "--checkpoint", missing, "--output", str(a_file / "m.json")],
                         capsys)  # fmt: skip
    assert f"--output {a_file / 'm.json'} cannot be written: {a_file} is a file, not a folder" in error
    error = _usage_error(["eval", "--checkpoint", missing, "--figure", str(tmp_path)], capsys)
    assert f"--figure {tmp_path} is a folder; it must name a file" in error
    assert a_file.read_text() == "the user's notes"


def test_an_output_in_a_missing_folder_passes_the_check(tmp_path, capsys):
    # The folder is created when the metrics are written (test_cli's train-then-eval).
    assert main(["eval", "--checkpoint", str(tmp_path / "absent.pt"), "--output",
                 str(tmp_path / "new" / "deeper" / "m.json")]) == 1  # fmt: skip
    assert "no checkpoint at" in capsys.readouterr().err


def test_the_library_refuses_the_same_settings():
    for settings, expected in (
        ({"iterations": 4, "stop_at": 5}, "stop_at 5 lies beyond the end of the schedule"),
        ({"threads": 0}, "threads must be at least 1, got 0"),
        ({"num_workers": -1}, "num_workers must be at least 0, got -1"),
        ({"image_size": 16}, "image_size must be at least 32, got 16: the network downsamples"),
        ({"dataset": "voc", "data_root": "v", "crop_size": 8}, "crop_size must be at least 32"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=expected):
            TrainConfig(**settings)
    assert cli.MIN_INPUT_SIDE == config_module.MIN_INPUT_SIDE


def test_voc_loader_workers_are_capped_at_the_usable_cpus(monkeypatch):
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 2)
    assert TrainConfig(dataset="voc", data_root="v").num_workers == 2  # the recipe says 4
    assert TrainConfig(dataset="voc", data_root="v", num_workers=4).num_workers == 4  # as asked
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 16)
    assert TrainConfig(dataset="voc", data_root="v").num_workers == 4
    assert TrainConfig(dataset="digits").num_workers == 0
