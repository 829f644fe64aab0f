"""Training loop: poly schedule, atomic checkpoints, exact resumption, NaN stop, two processes."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from em_tutorial.segmentation import (
    TOUR_MODEL,
    TrainConfig,
    TrainingDiverged,
    load_checkpoint,
    poly_factor,
    resolve_device,
    save_checkpoint,
    train,
)
from em_tutorial.segmentation import training as training_module
from em_tutorial.segmentation.runlog import JsonLog, json_safe, write_json


def _config(tmp_path, name="run", **overrides):
    settings = dict(
        dataset="digits",
        num_scenes=16,
        val_scenes=4,
        image_size=32,
        iterations=6,
        batch_size=4,
        checkpoint_every=3,
        log_every=1,
        out_dir=str(tmp_path / name),
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_poly_schedule():
    assert poly_factor(0, 100) == 1.0
    assert poly_factor(50, 100, 0.9) == pytest.approx(0.5**0.9)
    assert poly_factor(99, 100, 0.9) == pytest.approx(0.01**0.9)
    assert poly_factor(30, 100, 1.0) == pytest.approx(0.7)


def test_recipes_fill_defaults():
    voc = TrainConfig(dataset="voc", data_root="/data/voc")
    assert (voc.model, voc.iterations, voc.batch_size, voc.crop_size, voc.lr) == (
        "resnet101", 30_000, 16, 513, 9e-3)  # fmt: skip
    assert (voc.momentum, voc.weight_decay, voc.poly_power) == (0.9, 1e-4, 0.9)
    assert TrainConfig(dataset="digits", lr=0.2).lr == 0.2
    with pytest.raises(ValueError, match="data_root"):
        TrainConfig(dataset="voc")
    with pytest.raises(ValueError, match="dataset must be one of"):
        TrainConfig(dataset="coco")
    with pytest.raises(ValueError, match="stop_at must be at least 1, got 0"):
        TrainConfig(dataset="digits", stop_at=0)
    # Each config owns its defaults: editing one never edits the recipe or the next config.
    TrainConfig(dataset="digits").model_kwargs["num_bases"] = 3
    assert TrainConfig(dataset="digits").model_kwargs == TOUR_MODEL
    assert TOUR_MODEL["num_bases"] != 3


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")  # not a device torch knows: no silent fall-back to the CPU


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"iteration": 1, "w": torch.ones(3)}, path)
    # A save that fails half-way (an object torch cannot pickle) leaves the old file intact.
    with pytest.raises(Exception):
        save_checkpoint({"iteration": 2, "w": lambda: None}, path)
    state = torch.load(path, weights_only=True)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left
    path.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*ckpt.pt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, capsys):
    torch.set_num_threads(1)  # one thread: bitwise reproducible CPU kernels
    whole = train(_config(tmp_path, "whole"))

    first = train(_config(tmp_path, "split", stop_at=4))  # interrupted after 4 of 6 iterations
    assert first["metrics"] is None and first["iterations"] == 4
    saved = torch.load(first["checkpoint"], weights_only=True)
    assert saved["iteration"] == 4 and isinstance(saved["rng"]["torch"], torch.Tensor)
    torch.manual_seed(12345)  # disturb the global random state: resume must restore it
    # As if the run had been killed after logging iteration 5 but before checkpointing it:
    # the resumed run logs iteration 5 again, and the stale line must not stay beside it.
    with open(first["log"], "a") as handle:
        handle.write(json.dumps({"event": "train", "iteration": 5, "loss": 123.0}) + "\n")
        handle.write('{"event": "train", "iterat')  # and killed in the middle of the next line
    leftover = tmp_path / "split" / ".checkpoint.pt.4242.tmp"  # a process killed while saving
    leftover.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    second = train(_config(tmp_path, "split", resume=True))  # progress=False: no bar
    assert second["resumed_from"] == 4
    assert "resumed from iteration 4 of 6" in capsys.readouterr().out
    assert not leftover.exists()
    split_records = [json.loads(line) for line in open(second["log"])]
    split_losses = [r for r in split_records if r["event"] == "train"]
    assert [r["iteration"] for r in split_losses] == list(range(1, 7))
    assert 123.0 not in [r["loss"] for r in split_losses]

    expected, actual = whole["model"].state_dict(), second["model"].state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert second["metrics"]["miou"] == whole["metrics"]["miou"]

    # The log a user can plot: loss per iteration, then the final metrics.
    records = [json.loads(line) for line in open(whole["log"])]
    losses = [r for r in records if r["event"] == "train"]
    assert [r["iteration"] for r in losses] == list(range(1, 7))
    assert all({"loss", "lr", "images_per_s"} <= r.keys() for r in losses)
    assert records[-1]["event"] == "eval" and 0.0 <= records[-1]["miou"] <= 1.0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The 6-iteration run of ``_config`` (4 iterations per epoch), trained without a stop."""
    torch.set_num_threads(1)
    return train(_config(tmp_path_factory.mktemp("whole")))


def _assert_same_run(resumed, whole):
    expected, actual = whole["model"].state_dict(), resumed["model"].state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert resumed["metrics"]["miou"] == whole["metrics"]["miou"]
    assert resumed["final_loss"] == whole["final_loss"]


@pytest.mark.parametrize("stop_at", [2, 5], ids=["inside the first epoch", "inside the second"])
def test_resume_inside_an_epoch_gives_the_same_weights(tmp_path, uninterrupted, stop_at):
    # 16 scenes, batch 4: epochs end after iterations 4 and 8; 2 and 5 fall inside them.
    torch.set_num_threads(1)
    first = train(_config(tmp_path, "split", stop_at=stop_at))
    assert torch.load(first["checkpoint"], weights_only=True)["iteration"] == stop_at
    resumed = train(_config(tmp_path, "split", resume=True))
    assert resumed["resumed_from"] == stop_at
    _assert_same_run(resumed, uninterrupted)


def test_killed_after_a_checkpoint_inside_an_epoch_resumes_exactly(tmp_path, uninterrupted,
                                                                   monkeypatch):  # fmt: skip
    # Checkpoints after iterations 3 and 6; killed during iteration 5, inside the second epoch.
    torch.set_num_threads(1)
    step = training_module._step

    def killed_at_five(run, images, labels, iteration, ignore_index):
        if iteration == 4:  # the fifth iteration
            raise KeyboardInterrupt
        return step(run, images, labels, iteration, ignore_index)

    monkeypatch.setattr(training_module, "_step", killed_at_five)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "split"))
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["iteration"] == 3
    monkeypatch.setattr(training_module, "_step", step)
    resumed = train(_config(tmp_path, "split", resume=True))
    assert resumed["resumed_from"] == 3
    _assert_same_run(resumed, uninterrupted)


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_resuming_a_finished_run_keeps_its_record(tmp_path, capsys):
    first = train(_config(tmp_path, iterations=2, checkpoint_every=1))
    summary_path = tmp_path / "run" / "summary.json"
    recorded = summary_path.read_bytes()
    assert _strict_json(summary_path)["final_loss"] == first["final_loss"]
    capsys.readouterr()
    again = train(_config(tmp_path, iterations=2, checkpoint_every=1, resume=True))
    assert "the run had finished" in capsys.readouterr().out
    assert summary_path.read_bytes() == recorded  # not evaluated again over its record
    assert again["metrics"] == first["metrics"] and again["final_loss"] == first["final_loss"]
    # Killed after the last checkpoint, before summary.json: resuming evaluates, and the final
    # loss comes from the log (no iteration ran in the resumed process).
    summary_path.unlink()
    train(_config(tmp_path, iterations=2, checkpoint_every=1, resume=True))
    rewritten = _strict_json(summary_path)
    assert rewritten["final_loss"] == first["final_loss"] and rewritten["resumed_from"] == 2
    assert rewritten["metrics"] == _strict_json_value(first["metrics"])


def _strict_json_value(value):
    return json.loads(json.dumps(json_safe(value), allow_nan=False))


def test_json_files_never_hold_nan(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"final_loss": float("nan"), "iou": [1.0, float("inf")], "n": 3})
    assert _strict_json(path) == {"final_loss": None, "iou": [1.0, None], "n": 3}
    log = JsonLog(tmp_path / "log.jsonl", enabled=True)
    log.write(event="train", iteration=1, loss=float("-inf"))
    assert log.value_at("train", 1, "loss") is None and "Infinity" not in log.path.read_text()


def test_training_leaves_the_numpy_and_python_random_streams_alone(tmp_path):
    # Checkpoints keep only torch's random state, so exact resumption needs every other random
    # choice (augmentation, sampling, scenes) to come from its own seeded generator: training
    # must neither draw from nor reseed NumPy's or Python's global streams.
    np.random.seed(2024)
    random.seed(2024)
    numpy_before, python_before = np.random.get_state(), random.getstate()
    train(_config(tmp_path, iterations=2, checkpoint_every=1))
    numpy_after = np.random.get_state()
    assert numpy_after[0] == numpy_before[0] and numpy_after[2:] == numpy_before[2:]
    np.testing.assert_array_equal(numpy_after[1], numpy_before[1])
    assert random.getstate() == python_before
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert set(saved["rng"]) == {"torch", "cuda"}


def test_resume_refuses_other_settings_and_a_fresh_run_keeps_the_old_one(tmp_path):
    train(_config(tmp_path, iterations=2, checkpoint_every=1))
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(_config(tmp_path, iterations=2, lr=0.5, resume=True))
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already exists.*resume"):
        train(_config(tmp_path, iterations=2))
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # An absurd learning rate: the weights blow up after the first steps and the loss turns NaN.
    config = _config(tmp_path, iterations=50, checkpoint_every=1, lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration \d+.*last good checkpoint"):
        train(config)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert 1 <= state["iteration"] < 50
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    original = training_module.training_state

    def poisoned_state(iteration, model, optimizer, config):
        state = original(iteration, model, optimizer, config)
        if iteration == 2:  # as if a step had left an infinite weight behind a finite loss
            next(v for v in state["model"].values() if v.is_floating_point())[0] = float("inf")
        return state

    monkeypatch.setattr(training_module, "training_state", poisoned_state)
    with pytest.raises(TrainingDiverged, match=r"non-finite values in model\..* after iteration 2; "
                       r"the last good checkpoint is .*checkpoint\.pt"):  # fmt: skip
        train(_config(tmp_path, iterations=4, checkpoint_every=1))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 1


@pytest.mark.slow
def test_two_processes_with_torchrun_agree(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "em_tutorial.cli", "train", "--dataset", "digits", "--image-size", "32",
        "--num-scenes", "16", "--val-scenes", "4", "--iterations", "3", "--batch-size", "4",
        "--threads", "1", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Weights, BN statistics and EMAU bases: identical on both ranks after three steps.
    assert summary["replica_max_difference"] == 0.0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 3
