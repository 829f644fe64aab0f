"""EMAU variants: the frozen first convolution, the two bases-update rules, the two inits."""

import datetime

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from em_tutorial.nn import EMAU, emanet_tiny, param_groups  # noqa: E402

B, C, H, W, K, T = 2, 8, 5, 6, 4, 3


# --- the frozen first convolution ----------------------------------------------------------


def test_first_convolution_is_frozen_and_builds_no_graph():
    emau = EMAU(C, num_bases=K)
    assert not any(p.requires_grad for p in emau.conv_in.parameters())
    assert all(p.requires_grad for p in (*emau.conv_out.parameters(), *emau.bn_out.parameters()))
    outputs = []
    emau.conv_in.register_forward_hook(lambda module, args, out: outputs.append(out))
    emau(torch.randn(B, C, H, W, requires_grad=True))
    assert outputs[0].grad_fn is None and not outputs[0].requires_grad
    # Even if someone unfreezes it, the projection stays outside autograd.
    emau.conv_in.requires_grad_(True)
    emau(torch.randn(B, C, H, W, requires_grad=True))
    assert outputs[1].grad_fn is None


def test_first_convolution_bit_identical_after_sgd_with_weight_decay_and_momentum():
    torch.manual_seed(0)
    model = emanet_tiny(3).train()
    conv_in = model.emau.conv_in
    frozen = {name: p.detach().clone() for name, p in conv_in.named_parameters()}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # Plain SGD over *every* parameter, frozen ones included: weight decay would move a
    # parameter that had a gradient, even a zero one.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    grouped = torch.optim.SGD(param_groups(model, 0.1, 1e-2), momentum=0.9)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    for step in range(4):
        for opt in (optimizer, grouped):
            loss = nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert conv_in.weight.grad is None and conv_in.bias.grad is None
    for name, p in conv_in.named_parameters():
        assert torch.equal(p, frozen[name]), name
    for name, p in model.named_parameters():
        if p.requires_grad:  # every other parameter has learned something
            assert p.grad is not None, name
            assert not torch.equal(p, trained[name]), name


def test_ddp_needs_no_find_unused_parameters(tmp_path):
    """A DDP step with find_unused_parameters=False: the reducer expects a gradient for every
    parameter that requires one, and raises at the next iteration when one never came."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(emanet_tiny(3), find_unused_parameters=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(3):
            loss = model(torch.randn(2, 3, 32, 32)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        dist.destroy_process_group()


# --- the bases-update rules against float64 loops written from the formulas ------------------


def _unit(v, eps, floor):
    """v / (eps + |v|) (official) or v / max(|v|, eps) (mmsegmentation's F.normalize)."""
    norm = np.sqrt((v**2).sum(axis=1, keepdims=True))
    return v / np.maximum(norm, eps) if floor else v / (eps + norm)


def _reference_training_steps(emau, xs, rule):
    """Float64 loop in the (B, C, N) layout: per batch x, T EM iterations, then the update.

    official: mu <- (1 - m) mu + m mean_b(mu_b), normalisations v / (1e-6 + |v|);
    mmseg:    mu <- (1 - m) mu + m normalize(mean_b(mu_b)), normalisations v / max(|v|, 1e-12).
    Returns the bases mu^(0) (C, K) after each batch.
    """
    eps, floor = (1e-12, True) if rule == "mmseg" else (1e-6, False)
    w_in = emau.conv_in.weight.detach().double().numpy()[:, :, 0, 0]  # (C, C)
    b_in = emau.conv_in.bias.detach().double().numpy()  # (C,)
    mu0 = emau.mu.double().numpy().T.copy()  # (C, K)
    history = []
    for x in xs:
        b, c, h, w = x.shape
        feats = np.einsum("oc,bcn->bon", w_in, x.reshape(b, c, h * w)) + b_in[:, None]
        mu = np.repeat(mu0[None], b, axis=0)  # (B, C, K)
        for _ in range(T):
            logits = np.einsum("bcn,bck->bnk", feats, mu)  # (B, N, K)
            z = np.exp(logits - logits.max(axis=2, keepdims=True))
            z /= z.sum(axis=2, keepdims=True)
            counts = z.sum(axis=1, keepdims=True)  # (B, 1, K)
            z_ = z / np.maximum(counts, eps) if floor else z / (eps + counts)
            mu = _unit(np.einsum("bcn,bnk->bck", feats, z_), eps, floor)  # (B, C, K)
        mean = mu.mean(axis=0)  # (C, K)
        if rule == "mmseg":
            mean = _unit(mean[None], eps, floor)[0]
        mu0 = (1 - emau.momentum) * mu0 + emau.momentum * mean
        history.append(mu0.T.copy())
    return history


@pytest.mark.parametrize("rule", ["official", "mmseg"])
def test_bases_update_matches_float64_loop(rng, rule):
    torch.manual_seed(0)
    emau = EMAU(C, num_bases=K, num_stages=T, momentum=0.3, bases_update=rule).double().train()
    xs = [rng.standard_normal((B, C, H, W)) for _ in range(3)]
    expected = _reference_training_steps(emau, xs, rule)
    for x, mu in zip(xs, expected):
        emau(torch.from_numpy(x))
        np.testing.assert_allclose(emau.mu.numpy(), mu, rtol=1e-12, atol=1e-14)
    norms = emau.mu.norm(dim=1)
    # Neither rule renormalises after the average: an average of unit vectors is shorter.
    assert bool((norms < 1 - 1e-6).all())


def test_mmseg_rule_differs_from_official_rule(rng):
    """The loop above tells the two rules apart: each fails the other's reference."""
    torch.manual_seed(0)
    emau = EMAU(C, num_bases=K, num_stages=T, momentum=0.3).double().train()
    x = rng.standard_normal((B, C, H, W))
    (mmseg_mu,) = _reference_training_steps(emau, [x], "mmseg")
    emau(torch.from_numpy(x))
    assert np.abs(emau.mu.numpy() - mmseg_mu).max() > 1e-3


def test_mmseg_normalisation_floor_not_offset():
    """Features of norm ~1e-5: 1e-6 + |mu| leaves the bases ~10% short, max(|mu|, 1e-12) not."""
    torch.manual_seed(0)
    x = 1e-5 * torch.randn(B, C, H, W, dtype=torch.float64)
    lengths = {}
    for rule in ("official", "mmseg"):
        emau = EMAU(C, num_bases=K, bases_update=rule).double().eval()
        with torch.no_grad():
            emau.conv_in.weight.copy_(torch.eye(C).reshape(C, C, 1, 1))
            emau.conv_in.bias.zero_()
        emau(x)
        lengths[rule] = emau.last_bases.norm(dim=-1)  # (B, K)
    torch.testing.assert_close(lengths["mmseg"], torch.ones_like(lengths["mmseg"]))
    assert bool((lengths["official"] < 0.99).all())


def test_bases_update_errors():
    with pytest.raises(ValueError, match="bases_update"):
        EMAU(C, bases_update="renormalized")
    with pytest.raises(ValueError, match="renormalize_bases"):
        EMAU(C, renormalize_bases=True, bases_update="mmseg")
    with pytest.raises(ValueError, match="init"):
        EMAU(C, init="xavier")


# --- initialisation -----------------------------------------------------------------------


def test_official_init_keeps_default_bias_and_head_init():
    torch.manual_seed(0)
    official = emanet_tiny(3, init="official", ema_channels=256, head_channels=256)
    torch.manual_seed(0)
    kaiming = emanet_tiny(3, init="kaiming", ema_channels=256, head_channels=256)
    # Both: EMAU weights ~ N(0, sqrt(2 / n)), n = 1 * 1 * out_channels
    for model in (official, kaiming):
        for conv in (model.emau.conv_in, model.emau.conv_out):
            std = conv.weight.std().item()
            assert abs(std - (2 / conv.out_channels) ** 0.5) < 0.05 * std
    assert torch.equal(kaiming.emau.conv_in.bias, torch.zeros(256))
    # PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 256
    bias = official.emau.conv_in.bias
    assert bias.abs().max() <= 1 / 16 and bias.std() > 0.5 / 16 / 3**0.5
    # PyTorch's default weights: U(-b, b), b = 1/sqrt(fan_in), std = b / sqrt(3)
    for conv in (official.fc0[0], official.fc1[0], official.fc2):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.abs().max() <= fan_in**-0.5
        assert abs(conv.weight.std().item() - (3 * fan_in) ** -0.5) < 0.05 * (3 * fan_in) ** -0.5
    assert kaiming.fc0[0].weight.std() > 2 * official.fc0[0].weight.std()
    # The backbone is drawn the same way by both.
    torch.testing.assert_close(official.backbone.state_dict(), kaiming.backbone.state_dict())


def test_bn_momentum_option():
    model = emanet_tiny(3, bn_momentum=3e-4)
    momenta = {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {3e-4}
    default = {m.momentum for m in emanet_tiny(3).modules() if isinstance(m, nn.BatchNorm2d)}
    assert default == {0.1}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert {m.momentum for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)} == {3e-4}
    with pytest.raises(ValueError, match="momentum"):
        emanet_tiny(3, bn_momentum=0.0)
