"""The far-digit probe: a network without a global block cannot follow the swap, by construction."""

import numpy as np
import pytest
import torch

from em_tutorial.segmentation import TrainConfig, build_model
from em_tutorial.segmentation.config import build_val_set
from em_tutorial.segmentation.context_probe import far_digit_probe


def _config(head):
    return TrainConfig(dataset="context", head=head, val_scenes=6, seed=2)


@torch.no_grad()
def test_without_a_global_block_fragment_logits_ignore_the_far_digits():
    # The far digits lie beyond the convolutions' reach: a fragment's logits are the same
    # whether they are kept, swapped or removed (float rounding aside), trained or not.
    torch.manual_seed(0)
    config = _config("none")
    model = build_model(config, num_classes=11).eval()
    logits = {}
    for mode in ("keep", "swap", "remove"):
        scenes = build_val_set(config, far_digits=mode)
        logits[mode] = model(torch.stack([torch.as_tensor(scenes[i][0]) for i in range(6)]))
    windows = torch.as_tensor(scenes.windows)[:, None].expand_as(logits["keep"])
    for mode in ("swap", "remove"):
        torch.testing.assert_close(logits[mode][windows], logits["keep"][windows],
                                   rtol=0, atol=1e-5)  # fmt: skip
        assert not torch.allclose(logits[mode], logits["keep"])  # the far pixels did change
    probe = far_digit_probe(model, config)
    assert probe["follows_swap"] == 0.0 and probe["unchanged_by_swap"] == 1.0
    assert probe["fragment_accuracy"] == probe["fragment_accuracy_removed"]
    assert probe["pixels"] > 100


@pytest.mark.parametrize("head", ["emau", "pooling"])
def test_a_global_block_lets_the_far_digits_reach_the_fragments(head):
    torch.manual_seed(0)
    config = _config(head)
    model = build_model(config, num_classes=11).eval()
    with torch.no_grad():
        scenes = {m: build_val_set(config, far_digits=m) for m in ("keep", "swap")}
        out = {m: model(torch.as_tensor(s[0][0])[None]) for m, s in scenes.items()}
    windows = torch.as_tensor(scenes["keep"].windows[0])
    assert (out["swap"][0][:, windows] - out["keep"][0][:, windows]).abs().max() > 1e-6


def test_probe_counts_follow_on_a_planted_predictor():
    # A stand-in "network" that predicts, everywhere, the class of the far digits it is shown.
    config = _config("none")

    class FarReader(torch.nn.Module):
        def forward(self, images):
            logits = torch.zeros(len(images), 11, *images.shape[-2:])
            for b, image in enumerate(images):
                key = image.numpy().tobytes()
                logits[b, lookup[key]] = 1.0
            return logits

    lookup = {}
    for mode in ("keep", "swap", "remove"):
        scenes = build_val_set(config, far_digits=mode)
        for i in range(len(scenes)):
            far = scenes.far_classes[i] + 1 if mode != "remove" else 0
            lookup[np.asarray(scenes[i][0]).tobytes()] = far
    probe = far_digit_probe(FarReader(), config)
    assert probe["follows_swap"] == 1.0 and probe["unchanged_by_swap"] == 0.0
    assert probe["fragment_accuracy"] == 1.0 and probe["fragment_accuracy_removed"] == 0.0


def test_probe_needs_a_context_run():
    with pytest.raises(ValueError, match="context"):
        far_digit_probe(torch.nn.Identity(), TrainConfig(dataset="digits"))
