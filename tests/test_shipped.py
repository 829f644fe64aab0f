"""The small trained context networks shipped with the package (seed 0 of the experiment)."""

import pytest
import torch

from em_tutorial.segmentation.context_probe import far_digit_probe
from em_tutorial.segmentation.shipped import SHIPPED_DIR, SHIPPED_HEADS, shipped_context_model


def test_shipped_files_are_small():
    for head in SHIPPED_HEADS:
        size = (SHIPPED_DIR / f"context-{head}-seed0.pt").stat().st_size
        assert size < 500 * 1024, (head, size)


@pytest.fixture(scope="module")
def probes():
    torch.set_num_threads(1)
    return {head: far_digit_probe(*shipped_context_model(head), num_scenes=40)
            for head in SHIPPED_HEADS}  # fmt: skip


def test_shipped_networks_are_trained(probes):
    # far above chance (1 in 10 digit classes) on the fragments for the EMAU; the network
    # without attention has only the strip to go on
    assert probes["emau"]["fragment_accuracy"] > 0.4
    assert probes["none"]["fragment_accuracy"] > 0.1


def test_only_the_network_with_the_emau_follows_the_far_digits(probes):
    assert probes["none"]["follows_swap"] == 0.0 and probes["none"]["unchanged_by_swap"] == 1.0
    assert probes["emau"]["follows_swap"] > 0.2
    assert probes["emau"]["fragment_accuracy_removed"] < probes["emau"]["fragment_accuracy"]


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="heads"):
        shipped_context_model("nonlocal")
