"""The checkpoint checksum hashes types as well as values: contents that differ only in a
type (the key 0 or "0"; {}, [] or nothing) get different checksums. Files of the earlier
format, whose checksum did not tell those apart, are still verified with their own."""

import pytest
import torch

from em_tutorial.segmentation import CorruptCheckpoint, load_checkpoint, save_checkpoint
from em_tutorial.segmentation.checkpoint import CHECKPOINT_FORMAT, _format_2_checksum, content_checksum


def _state(**extra):
    return {"iteration": 3, "model": {"w": torch.arange(4.0)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "rng": {"torch": torch.zeros(4, dtype=torch.uint8), "cuda": []},
            "config": {"dataset": "digits"}, **extra}  # fmt: skip


@pytest.mark.parametrize(
    "first, second",
    [
        (_state(extra={0: 1.0}), _state(extra={"0": 1.0})),
        (_state(extra={}), _state(extra=[])),
        (_state(extra={}), _state()),
        (_state(extra=[]), _state()),
        (_state(extra=[1, 2]), _state(extra=(1, 2))),
        (_state(extra={"a": {"b": 1}}), _state(extra={"a.b": 1})),
        (_state(extra=["x", "y"]), _state(extra=["x", "y", []])),
    ],  # fmt: skip
    ids=["key 0 or '0'", "{} or []", "{} or missing", "[] or missing", "list or tuple",
         "nested or dotted key", "a trailing empty list"],  # fmt: skip
)
def test_contents_differing_only_in_type_have_different_checksums(first, second):
    assert content_checksum(first) != content_checksum(second)
    assert content_checksum(first) == content_checksum(_copy(first))


def _copy(state):
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}


def test_the_earlier_checksum_confused_them():
    # What format 2 could not tell apart, and why its files say which checksum they carry.
    assert _format_2_checksum(_state(extra={0: 1.0})) == _format_2_checksum(_state(extra={"0": 1.0}))
    assert _format_2_checksum(_state(extra={})) == _format_2_checksum(_state(extra=[])) \
        == _format_2_checksum(_state())


def test_format_2_files_are_still_verified_with_their_own_checksum(tmp_path):
    path = tmp_path / "checkpoint.pt"
    old = _state()
    old["format"], old["sha256"] = "em-tutorial checkpoint 2", _format_2_checksum(_state())
    torch.save(old, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4.0))
    old["model"]["w"][1] = 7.0  # changed since it was written
    torch.save(old, path)
    with pytest.raises(CorruptCheckpoint, match="does not match its SHA-256 checksum"):
        load_checkpoint(path)


def test_new_files_carry_the_typed_checksum_and_an_unknown_format_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_state(), path)
    saved = torch.load(path, weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT == "em-tutorial checkpoint 3"
    assert saved["sha256"] == content_checksum(saved)
    saved["format"] = "em-tutorial checkpoint 9"
    torch.save(saved, path)
    with pytest.raises(CorruptCheckpoint) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f"cannot read checkpoint {path}: its format 'em-tutorial checkpoint 9' is not one this "
        "em-tutorial reads ('em-tutorial checkpoint 3', 'em-tutorial checkpoint 2'): written by "
        "a newer em-tutorial, or altered"
    )
