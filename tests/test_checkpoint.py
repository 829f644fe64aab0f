"""Checkpoints are never trusted blindly: checksum, finiteness, and one clear line for a file
that is not an em-tutorial checkpoint."""

import json
import warnings

import numpy as np
import pytest
import torch

from em_tutorial.segmentation import CorruptCheckpoint, load_checkpoint, save_checkpoint
from em_tutorial.segmentation.checkpoint import (
    CHECKPOINT_FORMAT,
    UnverifiedCheckpointWarning,
    content_checksum,
    remove_stale_temporaries,
)


def _state():
    weight = torch.arange(2000, dtype=torch.float32) / 7 + 0.5  # distinctive bytes in the file
    return {
        "iteration": 3,
        "model": {"conv.weight": weight, "bn.num_batches_tracked": torch.tensor(3)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(5)}},
                      "param_groups": [{"lr": 0.1, "params": [0]}]},  # fmt: skip
        "rng": {"torch": torch.get_rng_state(), "cuda": []},
        "config": {"dataset": "digits", "lr": 0.1},
    }


def _assert_same(loaded, original):
    assert torch.equal(loaded["model"]["conv.weight"], original["model"]["conv.weight"])
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], torch.ones(5))
    assert loaded["config"] == original["config"] and loaded["iteration"] == original["iteration"]


def test_round_trip_keeps_every_entry_and_plain_torch_reads_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    _assert_same(load_checkpoint(path), _state())
    raw = torch.load(path, weights_only=True)
    assert raw["sha256"] == content_checksum(raw) and len(raw["sha256"]) == 64


def test_checksum_changes_with_any_value_name_dtype_or_shape():
    base = content_checksum(_state())
    assert content_checksum(_state()) == base
    changed = [_state() for _ in range(4)]
    changed[0]["model"]["conv.weight"][1234] += 0.25
    changed[1]["model"]["conv.bias"] = changed[1]["model"].pop("conv.weight")
    changed[2]["model"]["conv.weight"] = changed[2]["model"]["conv.weight"].double()
    changed[3]["model"]["conv.weight"] = changed[3]["model"]["conv.weight"].reshape(40, 50)
    assert len({base, *map(content_checksum, changed)}) == 5


def test_flipped_bytes_in_the_weights_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    raw = bytearray(path.read_bytes())
    start = raw.find(_state()["model"]["conv.weight"].numpy().tobytes())
    assert start > 0
    for offset in range(start + 100, start + 4000, 200):  # 20 flipped bytes inside the tensor
        raw[offset] ^= 0xFF
    path.write_bytes(raw)
    with pytest.raises(CorruptCheckpoint, match="does not match its SHA-256 checksum") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("seed", range(6))
def test_twenty_random_flipped_bytes_are_refused_or_change_nothing(tmp_path, seed):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
    rng = np.random.default_rng(seed)
    raw[rng.choice(raw.size, size=20, replace=False)] ^= rng.integers(1, 256, 20, dtype=np.uint8)
    path.write_bytes(raw.tobytes())
    try:
        loaded = load_checkpoint(path)
    except CorruptCheckpoint as error:
        assert str(error).startswith(f"cannot read checkpoint {path}") and "\n" not in str(error)
    else:  # the flips hit padding or metadata torch does not use: the content is intact
        _assert_same(loaded, _state())


def test_non_finite_state_is_neither_saved_nor_loaded(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()
    bad = _state()
    bad["optimizer"]["state"][0]["momentum_buffer"][2] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite values in optimizer\.state\.0\.momentum_buffer"):
        save_checkpoint(bad, path)
    assert path.read_bytes() == before  # the last good checkpoint stays
    # A file holding NaN with a valid checksum (written by something else) is refused on load.
    bad = _state()
    bad["model"]["conv.weight"][0] = float("nan")
    bad["format"] = CHECKPOINT_FORMAT
    bad["sha256"] = content_checksum(bad)
    torch.save(bad, path)
    with pytest.raises(CorruptCheckpoint, match=r"NaN or infinity in model\.conv\.weight$"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x93\x17random bytes" * 10, "not a PyTorch file at all"),
        (json.dumps({"iteration": 3, "model": {}}).encode(), "not a PyTorch file at all"),
        ({"conv.weight": torch.ones(2), "conv.bias": torch.ones(2)},
         "a PyTorch file holding the keys conv.weight, conv.bias; missing iteration, model"),
        ([torch.ones(2)], "a PyTorch file holding a list; missing iteration"),
    ],  # fmt: skip
    ids=["random bytes", "JSON", "a state_dict", "a list"],
)
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path, content, expected):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CorruptCheckpoint) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"cannot read checkpoint {path}: not an em-tutorial checkpoint")
    assert expected in message and "\n" not in message


def test_a_truncated_checkpoint_is_named_as_damaged(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CorruptCheckpoint, match="damaged, truncated") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_a_checkpoint_from_before_checksums_loads_with_a_warning(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(_state(), path)  # the earlier format: the same entries, no checksum
    with pytest.warns(UnverifiedCheckpointWarning, match="has no checksum"):
        loaded = load_checkpoint(path)
    _assert_same(loaded, _state())
    loaded["model"]["conv.weight"][0] = float("nan")  # the finiteness check still applies
    torch.save(loaded, path)
    with warnings.catch_warnings(), pytest.raises(CorruptCheckpoint, match="NaN or infinity"):
        warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
        load_checkpoint(path)


def test_temporary_files_of_interrupted_writes_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    leftover = tmp_path / ".checkpoint.pt.4242.tmp"  # a process killed while saving
    leftover.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.4242.tmp"
    other.write_bytes(b"not ours")
    assert remove_stale_temporaries(path) == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.4242.tmp", "checkpoint.pt"]
