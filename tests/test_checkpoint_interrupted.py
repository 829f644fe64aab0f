"""Stopping while a checkpoint is written: SIGTERM leaves no temporary file and says so in one
line; under several processes, a checkpoint refused on rank 0 stops every rank."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from em_tutorial.segmentation import TrainConfig, TrainingDiverged, train
from em_tutorial.segmentation import training as training_module
from em_tutorial.segmentation.distributed import Process, max_over_ranks

# Trains one iteration of a tiny run; its checkpoint write stalls half-way (a file of 216 MB
# takes seconds) and says so by creating READY, so that the test can send SIGTERM then.
_STALLED_SAVE = """
import pathlib, sys, time, torch
from em_tutorial.cli import main

def stalled_save(obj, handle, *args, **kwargs):
    handle.write(b"the first bytes of a checkpoint")
    handle.flush()
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(120)

torch.save = stalled_save
sys.exit(main(["train", "--image-size", "32", "--num-scenes", "4", "--val-scenes", "2",
               "--iterations", "1", "--batch-size", "2", "--threads", "1", "--no-progress",
               "--out", sys.argv[2]]))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_while_saving_removes_the_temporary_file_and_says_so(tmp_path):
    ready, out = tmp_path / "ready", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _STALLED_SAVE, str(ready), str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the run never reached its checkpoint"
            time.sleep(0.1)
        assert [p.name for p in out.glob(".checkpoint.pt.*.tmp")]  # the write is under way
        child.send_signal(signal.SIGTERM)
        _, error = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143
    assert error == "em-tutorial: error: terminated (SIGTERM)\n"
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl"]  # no temporary file left


def test_max_over_ranks_is_the_value_itself_for_one_process():
    assert [max_over_ranks(v, Process()) for v in (0, 1, 2)] == [0, 1, 2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_with_a_poisoned_save(rank, port, out_dir, results):
    """One of two gloo ranks; rank 0's checkpoint of iteration 2 holds an infinite weight."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    original = training_module.training_state

    def poisoned_state(iteration, model, optimizer, config):
        state = original(iteration, model, optimizer, config)
        if iteration == 2:
            next(v for v in state["model"].values() if v.is_floating_point())[0] = float("inf")
        return state

    training_module.training_state = poisoned_state
    config = TrainConfig(dataset="digits", num_scenes=8, val_scenes=2, image_size=32,
                         iterations=4, batch_size=4, checkpoint_every=1, device="cpu",
                         out_dir=out_dir, progress=False)  # fmt: skip
    try:
        train(config)
    except (TrainingDiverged, RuntimeError) as error:
        results.put((rank, type(error).__name__, str(error)))
    else:
        results.put((rank, "finished", ""))


@pytest.mark.slow  # two processes start and import torch
def test_a_checkpoint_refused_on_rank_0_stops_every_rank(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    ranks = [context.Process(target=_rank_with_a_poisoned_save,
                             args=(rank, port, str(tmp_path / "run"), results))
             for rank in range(2)]  # fmt: skip
    for process in ranks:
        process.start()
    try:
        outcomes = sorted(results.get(timeout=240) for _ in ranks)
    finally:
        for process in ranks:
            process.join(timeout=30)
            if process.is_alive():  # a rank left waiting at a collective
                process.kill()
    assert outcomes[0][:2] == (0, "TrainingDiverged")
    assert "non-finite values in model." in outcomes[0][2] and "after iteration 2" in outcomes[0][2]
    assert outcomes[1][:2] == (1, "TrainingDiverged")
    assert outcomes[1][2].startswith("rank 0 refused to save the checkpoint: non-finite values "
                                     "after iteration 2; the last good checkpoint is")  # fmt: skip
