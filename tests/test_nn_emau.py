"""The EMA Unit: its forward against a float64 hand computation, its bases, its errors."""

import datetime
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from em_tutorial.nn import EMAU, NonLocal2d  # noqa: E402

B, C, H, W, K, T = 2, 8, 5, 6, 4, 3


def _official_emau_numpy(x, emau, training):
    """The official EMAU forward in float64 NumPy, in the official (B, C, N) layout.

    conv1x1 (bias) -> T x [z = softmax_k(x^T mu); z_ = z / (1e-6 + sum_n z);
    mu = x z_; mu /= 1e-6 + |mu|] -> relu(mu z^T) -> conv1x1 (no bias) -> BN -> + input -> relu.
    Returns the output and the final bases (B, C, K).
    """
    w_in = emau.conv_in.weight.detach().double().numpy()[:, :, 0, 0]  # (C, C)
    b_in = emau.conv_in.bias.detach().double().numpy()  # (C,)
    w_out = emau.conv_out.weight.detach().double().numpy()[:, :, 0, 0]  # (C, C)
    bn = emau.bn_out
    b, c, h, w = x.shape
    identity = x.reshape(b, c, h * w)  # (B, C, N)
    feats = np.einsum("oc,bcn->bon", w_in, identity) + b_in[:, None]  # (B, C, N)
    mu = np.repeat(emau.mu.double().numpy().T[None], b, axis=0)  # (B, C, K)
    for _ in range(emau.num_stages):
        logits = np.einsum("bcn,bck->bnk", feats, mu)  # (B, N, K)
        z = np.exp(logits - logits.max(axis=2, keepdims=True))
        z /= z.sum(axis=2, keepdims=True)
        z_ = z / (1e-6 + z.sum(axis=1, keepdims=True))
        mu = np.einsum("bcn,bnk->bck", feats, z_)  # (B, C, K)
        mu = mu / (1e-6 + np.sqrt((mu**2).sum(axis=1, keepdims=True)))
    recon = np.maximum(np.einsum("bck,bnk->bcn", mu, z), 0)  # (B, C, N)
    y = np.einsum("oc,bcn->bon", w_out, recon)  # (B, C, N)
    if training:
        mean, var = y.mean(axis=(0, 2)), y.var(axis=(0, 2))  # batch statistics (biased var)
    else:
        mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    gamma, beta = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    y = (y - mean[:, None]) / np.sqrt(var[:, None] + bn.eps) * gamma[:, None] + beta[:, None]
    return np.maximum(y + identity, 0).reshape(b, c, h, w), mu


def _random_emau(**kwargs):
    torch.manual_seed(0)
    emau = EMAU(C, num_bases=K, num_stages=T, **kwargs)
    with torch.no_grad():  # non-trivial BN so that its affine part and statistics matter
        emau.conv_in.bias.normal_()
        emau.bn_out.weight.uniform_(0.5, 1.5)
        emau.bn_out.bias.normal_()
        emau.bn_out.running_mean.normal_()
        emau.bn_out.running_var.uniform_(0.5, 2.0)
    return emau


@pytest.mark.parametrize("training", [True, False])
def test_emau_matches_float64_hand_computation(rng, training):
    emau = _random_emau()
    emau.train(training)
    x = rng.standard_normal((B, C, H, W))
    expected, expected_bases = _official_emau_numpy(x, emau, training)
    for dtype, rtol, atol in ((torch.float64, 1e-10, 1e-12), (torch.float32, 1e-4, 1e-5)):
        module = _random_emau().train(training).to(dtype)
        out = module(torch.from_numpy(x).to(dtype))
        assert out.shape == (B, C, H, W) and out.dtype == dtype
        np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=rtol, atol=atol)
        bases = module.last_bases.double().numpy().transpose(0, 2, 1)  # (B, C, K)
        np.testing.assert_allclose(bases, expected_bases, rtol=rtol, atol=atol)


def test_visualisation_attributes(rng):
    emau = _random_emau()
    assert emau.last_z is None and emau.last_bases is None
    emau(torch.from_numpy(rng.standard_normal((B, C, H, W))).float())
    assert emau.last_z.shape == (B, H * W, K) and emau.last_bases.shape == (B, K, C)
    assert not emau.last_z.requires_grad and not emau.last_bases.requires_grad
    torch.testing.assert_close(emau.last_z.sum(-1), torch.ones(B, H * W))


def test_bases_unchanged_in_eval_mode(rng):
    emau = _random_emau().eval()
    before = emau.mu.clone()
    emau(torch.from_numpy(rng.standard_normal((B, C, H, W))).float())
    assert torch.equal(emau.mu, before)


@pytest.mark.parametrize("renormalize", [False, True])
def test_bases_moving_average_in_train_mode(rng, renormalize):
    momentum = 0.25
    emau = _random_emau(momentum=momentum, renormalize_bases=renormalize).double().train()
    before = emau.mu.clone()
    emau(torch.from_numpy(rng.standard_normal((B, C, H, W))))
    # mu <- (1 - momentum) mu + momentum mean_b(mu_b^(T))
    expected = (1 - momentum) * before + momentum * emau.last_bases.mean(dim=0)
    if renormalize:
        expected = expected / (1e-6 + expected.norm(dim=1, keepdim=True))
    torch.testing.assert_close(emau.mu, expected, rtol=1e-14, atol=1e-15)
    assert not torch.equal(emau.mu, before)
    norms = emau.mu.norm(dim=1)
    if renormalize:
        torch.testing.assert_close(norms, torch.ones(K, dtype=torch.float64), rtol=1e-5, atol=0)
    else:  # an average of unit vectors is shorter than one
        assert bool((norms < 1).all())


def test_bases_initialisation_and_state_dict():
    emau = EMAU(32, num_bases=16)
    assert emau.mu.shape == (16, 32) and not emau.mu.requires_grad
    torch.testing.assert_close(emau.mu.norm(dim=1), torch.ones(16))
    assert "mu" in emau.state_dict()
    assert all(p is not emau.mu for p in emau.parameters())
    # Columns are independent draws: the bases are not all the same vector.
    assert torch.linalg.matrix_rank(emau.mu) == 16


def test_no_gradient_into_bases(rng):
    emau = _random_emau().train()
    x = torch.from_numpy(rng.standard_normal((B, C, H, W))).float().requires_grad_()
    emau(x).square().sum().backward()
    assert emau.mu.grad is None
    assert emau.last_bases.grad_fn is None and emau.last_z.grad_fn is None
    # As in the official code the EM output is a constant for autograd, so the first 1x1
    # convolution gets no gradient from the loss; everything after the EM does.
    assert emau.conv_in.weight.grad is None
    assert emau.conv_out.weight.grad is not None and bool(emau.conv_out.weight.grad.abs().sum() > 0)
    assert x.grad is not None  # through the residual connection


def test_autocast_bfloat16_close_to_float32(rng):
    emau = _random_emau().eval()
    x = torch.from_numpy(rng.standard_normal((B, C, 9, 9))).float()
    reference = emau(x)
    z_reference = emau.last_z
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emau(x)
    assert bool(torch.isfinite(out).all())
    assert emau.last_z.dtype == torch.float32  # the EM iterations ran in float32
    relative_error = (out.float() - reference).norm() / reference.norm()
    assert relative_error < 3e-2
    assert (emau.last_z - z_reference).abs().max() < 5e-2


@pytest.mark.parametrize("module_cls", [EMAU, NonLocal2d])
def test_bad_input_errors(module_cls):
    module = module_cls(C)
    with pytest.raises(ValueError, match=f"C={C} channels"):
        module(torch.randn(B, C + 1, H, W))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        module(torch.randn(C, H, W))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"num_stages": 0}, ValueError, r"^num_stages \(T\) must be at least 1"),
     ({"num_stages": 2.5}, TypeError, r"^num_stages \(T\) must be an integer; got 2.5"),
     ({"momentum": 1.5}, ValueError, "^momentum"), ({"momentum": "0.1"}, TypeError, "^momentum"),
     ({"num_bases": 0}, ValueError, "^num_bases"), ({"num_bases": 2.0}, TypeError, "^num_bases"),
     ({"lam": float("nan")}, ValueError, "^lam"), ({"lam": "1"}, TypeError, "^lam")],
)
def test_bad_construction_errors(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        EMAU(C, **kwargs)
    assert type(info.value) is error


def test_non_local_block_matches_its_equation(rng):
    """y_i = x_i + BN(W sum_j softmax_j(theta_i . phi_j) g_j), checked by explicit loops."""
    torch.manual_seed(0)
    block = NonLocal2d(C).double().eval()
    x = torch.from_numpy(rng.standard_normal((1, C, 3, 4)))
    out = block(x)
    with torch.no_grad():
        theta, phi, g = (m(x)[0].flatten(1).T.numpy() for m in (block.theta, block.phi, block.g))
    n = theta.shape[0]
    y = np.zeros_like(g)
    for i in range(n):
        weights = np.exp([theta[i] @ phi[j] for j in range(n)])
        y[i] = sum(weights[j] * g[j] for j in range(n)) / weights.sum()
    y = torch.from_numpy(y.T.reshape(1, -1, 3, 4).copy())
    expected = x + block.bn_out(block.conv_out(y))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


# --- torch.distributed: the bases stay identical on every rank --------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_gloo(rank, world_size, port):
    torch.set_num_threads(1)  # two processes share the machine's cores
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),  # fail, do not hang, if the port was taken
    )


def _distributed_step(rank, world_size, port, out_dir, rule):
    _init_gloo(rank, world_size, port)
    try:
        torch.manual_seed(0)  # same initial bases and weights on every rank
        emau = EMAU(C, num_bases=K, num_stages=T, bases_update=rule).train()
        x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(100 + rank))
        emau(x)  # a different batch on every rank
        torch.save({"mu": emau.mu, "x": x}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_on_two_ranks(step, tmp_path, rule):
    """Spawn ``step(rank, world_size, port, out_dir, rule)`` on two gloo ranks; return what
    each saved in ``out_dir/rank<r>.pt``."""
    world_size = 2
    mp.spawn(step, args=(world_size, _free_port(), str(tmp_path), rule), nprocs=world_size)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


@pytest.mark.parametrize("rule", ["official", "mmseg"])
def test_distributed_bases_identical_across_ranks(tmp_path, rule):
    results = _run_on_two_ranks(_distributed_step, tmp_path, rule)
    assert not torch.equal(results[0]["x"], results[1]["x"])
    assert torch.equal(results[0]["mu"], results[1]["mu"])

    # ... and equal to the moving average of the mean over both ranks' batch means.
    torch.manual_seed(0)
    emau = EMAU(C, num_bases=K, num_stages=T, bases_update=rule).eval()
    initial = emau.mu.clone()
    rank_means = []
    for result in results:
        emau(result["x"])
        rank_means.append(emau.last_bases.mean(dim=0))
    batch_mean = torch.stack(rank_means).mean(dim=0)  # (K, C)
    one_rank_mean = rank_means[0]
    if rule == "mmseg":  # normalised before the average
        batch_mean = batch_mean / batch_mean.norm(dim=1, keepdim=True)
        one_rank_mean = one_rank_mean / one_rank_mean.norm(dim=1, keepdim=True)
    expected = 0.9 * initial + 0.1 * batch_mean
    torch.testing.assert_close(results[0]["mu"], expected, rtol=1e-5, atol=1e-6)
    single_rank = 0.9 * initial + 0.1 * one_rank_mean
    assert not torch.allclose(results[0]["mu"], single_rank, rtol=1e-5, atol=1e-6)


def _distributed_skip_step(rank, world_size, port, out_dir, rule):
    """Two steps; on each, rank 0 gets a faulty batch (empty, then one NaN), rank 1 a good one."""
    _init_gloo(rank, world_size, port)
    try:
        torch.manual_seed(0)
        emau = EMAU(C, num_bases=K, num_stages=T, bases_update=rule).train()
        record = {"initial": emau.mu.clone()}
        for fault in ("empty", "nan"):
            x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(100 + rank))
            if rank == 0 and fault == "empty":
                x = x[:0]
            if rank == 0 and fault == "nan":
                x[0, 0, 0, 0] = float("nan")
            record[fault] = ""
            try:
                emau(x)
            except ValueError as refused:
                record[fault] = str(refused)
            record[f"mu after {fault}"] = emau.mu.clone()
        torch.save(record, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rule", ["official", "mmseg"])
def test_distributed_skip_on_one_rank_is_a_skip_on_every_rank(tmp_path, rule):
    results = _run_on_two_ranks(_distributed_skip_step, tmp_path, rule)
    for result in results:  # bit-identical to the initial bases on both ranks, after both steps
        assert torch.equal(result["mu after empty"], result["initial"])
        assert torch.equal(result["mu after nan"], result["initial"])
    # the good rank ran normally; the faulty one refused the empty batch and NaN after taking
    # part in the all-reduce
    assert results[1]["empty"] == results[1]["nan"] == ""
    assert results[0]["empty"].startswith("EMAU input x of shape (0, 8, 5, 6) is an empty batch")
    assert results[0]["nan"].startswith("EMAU input x contains NaN or inf in image 0 of the batch")
