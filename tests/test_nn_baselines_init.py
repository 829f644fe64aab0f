"""Each context block at initialisation, as documented: which start as the identity.

* ``NonLocal2d`` (standard, mmcv's settings): identity (output gamma = 0), embeddings drawn
  from N(0, 0.01) with zero biases, logits scaled by 1/sqrt(C');
* ``NonLocal2d(zero_init_output=False)``: not the identity;
* ``EMAU(zero_init_output=True)`` (EMANet head ``"emau_gamma0"``): identity on the
  non-negative features it receives; ``EMAU`` as the authors start it: not the identity;
* ``ImagePooling2d``: not the identity (see tests/test_nn_pooling.py).
"""

import math

import pytest
import torch

from em_tutorial.nn import EMAU, NonLocal2d, emanet_tiny


@pytest.fixture
def features():
    torch.manual_seed(0)
    return torch.rand(4, 64, 6, 6)  # non-negative, as after fc0's ReLU


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_standard_non_local_block_is_the_identity(features, mode):
    block = NonLocal2d(64)
    block.train(mode == "train")
    torch.testing.assert_close(block(features), features, rtol=0, atol=0)


def test_non_local_block_with_gamma_one_is_not_the_identity(features):
    out = NonLocal2d(64, zero_init_output=False).train()(features)
    assert (out - features).norm() > 0.5 * features.norm()


def test_non_local_embeddings_start_at_the_standard_scale():
    torch.manual_seed(0)
    block = NonLocal2d(256)
    for conv in (block.theta, block.phi, block.g):
        assert abs(conv.weight.std().item() - 0.01) < 0.001
        assert conv.bias.abs().max() == 0
    assert block.bn_out.weight.abs().max() == 0 and block.bn_out.bias.abs().max() == 0


@pytest.mark.parametrize("use_scale", [True, False])
def test_non_local_attention_uses_the_scale_as_documented(use_scale):
    # float64 hand computation of y = softmax(theta^T phi / sqrt(C')) g, read through an
    # output layer set to the identity map (W_z = I, BN scale 1, eval statistics 0 / 1).
    torch.manual_seed(0)
    block = NonLocal2d(4, inter_channels=4, use_scale=use_scale).double().eval()
    with torch.no_grad():
        for conv in (block.theta, block.phi, block.g):
            conv.weight.normal_()
        block.conv_out.weight.copy_(torch.eye(4)[:, :, None, None])
        block.bn_out.weight.fill_(1.0)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    points = x.flatten(2)[0].T  # (N, C)
    theta = points @ block.theta.weight[:, :, 0, 0].T + block.theta.bias  # (N, C')
    phi = points @ block.phi.weight[:, :, 0, 0].T + block.phi.bias  # (N, C')
    g = points @ block.g.weight[:, :, 0, 0].T + block.g.bias  # (N, C')
    logits = theta @ phi.T / (math.sqrt(4) if use_scale else 1.0)  # (N, N)
    y = torch.softmax(logits, dim=1) @ g  # (N, C')
    expected = x + y.T.reshape(1, 4, 3, 3) / math.sqrt(1 + block.bn_out.eps)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_emau_with_zero_gamma_is_the_identity(features, mode):
    block = EMAU(64, num_bases=8, zero_init_output=True)
    block.train(mode == "train")
    torch.testing.assert_close(block(features), features, rtol=0, atol=0)


def test_emau_as_the_authors_start_it_is_not_the_identity(features):
    out = EMAU(64, num_bases=8, init="official").train()(features)
    assert (out - features).norm() > 0.1 * features.norm()


@pytest.mark.parametrize("head, identity", [("emau_gamma0", True), ("nonlocal", True),
                                            ("emau", False), ("nonlocal_gamma1", False),
                                            ("pooling", False)])
def test_emanet_heads_at_initialisation(head, identity):
    torch.manual_seed(0)
    model = emanet_tiny(11, head=head, ema_channels=32, num_bases=8).eval()
    features = model.fc0(model.backbone(torch.rand(2, 3, 48, 48)))  # (B, 32, 6, 6)
    same = torch.equal(model.attention(features), features)
    assert same == identity
