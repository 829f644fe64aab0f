# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. The EMA Unit in PyTorch
#
# Notebook 2 ran EM attention on NumPy arrays. EMANet runs it inside a network, on the
# feature map of a backbone, as one block: the **EM Attention Unit** (EMAU). This notebook
# reads the module line by line, checks that the EM inside it computes exactly what the NumPy
# stage computes, follows the moving average that carries the bases from one batch to the
# next, and shows why no gradient ever reaches them.
#
# On a feature map $X \in \mathbb{R}^{B \times C \times H \times W}$ with $N = HW$ pixels the
# unit computes
#
# $$
# \begin{aligned}
# X' &= \mathrm{conv}_{1\times1}(X) &&\text{(with bias)}\\
# z,\ \mu^{(T)},\ \tilde X &= \mathrm{EMA}\big(X',\ \mu^{(0)},\ T\big) &&\text{(}T\text{ iterations of A}_E\text{, A}_M\text{, then A}_R\text{, under no-grad)}\\
# Y &= \mathrm{ReLU}\Big(X + \mathrm{BN}\big(\mathrm{conv}_{1\times1}(\mathrm{ReLU}(\tilde X))\big)\Big) &&\text{(residual)}
# \end{aligned}
# $$

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np
import torch

from em_tutorial import ema
from em_tutorial.nn import EMAU
from em_tutorial.nn import functional as nnf

torch.manual_seed(0)
torch.set_num_threads(1)  # small tensors: one thread is as fast, and steadier on a busy machine
rng = np.random.default_rng(0)

# %% [markdown]
# ## The module, line by line
#
# The constructor draws the initial bases $\mu^{(0)} \sim \mathcal{N}(0, \sqrt{2/K})$ and
# scales each to unit length. They are registered as a **buffer**, not a parameter: they are
# saved in the `state_dict` and moved by `.to(device)`, but the optimiser never sees them.

# %%
unit = EMAU(channels=16, num_bases=8, num_stages=3)
print(unit)
print("parameters:", [name for name, _ in unit.named_parameters()])
print("buffers:   ", [name for name, _ in unit.named_buffers()])
print("mu:", tuple(unit.mu.shape), " row norms:", unit.mu.norm(dim=1)[:4].tolist(), "...")

# %% [markdown]
# The forward pass. Read it against the three lines of the equation above: `conv_in` is the
# first $1\times1$ convolution, `em_iterations` runs $T$ = `num_stages` iterations on the
# flattened map (pixels become the rows $x_n$), A$_R$ follows in the channels-first layout of
# the map, and the last line is the residual.

# %%
print(inspect.getsource(EMAU.forward))

# %% [markdown]
# The EM itself is `em_tutorial.nn.functional.em_iterations`, the loop inside
# `em_tutorial.nn.functional.em_attention`, the tensor twin of `em_tutorial.ema.em_attention`:
# same arguments, same shapes, same $\epsilon = 10^{-6}$. Each line of the loop carries the
# equation it computes:
#
# - A$_E$: $z_{nk} = \dfrac{\exp(\lambda\, x_n^\top \mu_k)}{\sum_j \exp(\lambda\, x_n^\top \mu_j)}$
# - A$_M$: $\mu_k = \dfrac{\sum_n z_{nk}\, x_n}{\epsilon + \sum_n z_{nk}}$, then
#   $\mu_k \leftarrow \mu_k / (\epsilon + \lVert \mu_k \rVert)$
#
# `em_attention` checks its inputs, runs this loop, then computes A$_R$,
# $\tilde x_n = \sum_k z_{nk}\, \mu_k$, as `z @ mu`; `EMAU.forward` above computes the same
# product channels-first.

# %%
print(inspect.getsource(nnf.em_iterations))

# %% [markdown]
# ## The same numbers as the NumPy stage
#
# Three implementations should agree: the NumPy function, the PyTorch function, and the EM
# that runs inside `EMAU.forward`. To isolate the last one, set the first $1\times1$
# convolution to the identity (weight $I$, bias 0): then $X' = X$ and the unit's attention maps
# `last_z` and final bases `last_bases` must be what the NumPy stage returns for the same
# input and initial bases. In float64 they agree to rounding.

# %%
B, C, H, W, K = 2, 16, 12, 10, 8
feature_map = torch.randn(B, C, H, W, dtype=torch.float64)

unit = EMAU(C, num_bases=K, num_stages=3).double().eval()
with torch.no_grad():
    unit.conv_in.weight.copy_(torch.eye(C, dtype=torch.float64).reshape(C, C, 1, 1))
    unit.conv_in.bias.zero_()
    unit(feature_map)

pixels = feature_map.flatten(2).mT  # (B, N, C): one row x_n per pixel
z_np, mu_np, x_tilde_np = ema.em_attention(pixels.numpy(), unit.mu.numpy(), n_iter=3)
z_pt, mu_pt, x_tilde_pt = nnf.em_attention(pixels, unit.mu, n_iter=3)


def largest_relative_difference(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


print(f"z:        NumPy vs torch {largest_relative_difference(z_pt, z_np):.1e},"
      f"  NumPy vs EMAU {largest_relative_difference(unit.last_z, z_np):.1e}")
print(f"mu:       NumPy vs torch {largest_relative_difference(mu_pt, mu_np):.1e},"
      f"  NumPy vs EMAU {largest_relative_difference(unit.last_bases, mu_np):.1e}")
print(f"x_tilde:  NumPy vs torch {largest_relative_difference(x_tilde_pt, x_tilde_np):.1e}")

# %% [markdown]
# `last_z` has shape $(B, N, K)$; its column $k$, reshaped to $H \times W$, is the
# **attention map** of basis $k$: how strongly each pixel is assigned to it. On random
# features the maps are noise; notebook 5 shows them on a trained network.

# %%
fig, axes = plt.subplots(1, K, figsize=(1.6 * K, 1.8))
for k, ax in enumerate(axes):
    ax.imshow(unit.last_z[0, :, k].reshape(H, W), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"$z_{{\\cdot {k}}}$")
    ax.axis("off")
fig.suptitle("attention maps of the K bases (random features)", y=1.05)
plt.show()

# %% [markdown]
# ## The moving average of the bases
#
# EM needs a starting point $\mu^{(0)}$, and a good one saves iterations. EMANet keeps one
# across batches: after each training step the initial bases move towards the batch mean of
# the final ones,
#
# $$
# \mu^{(0)} \leftarrow (1 - m)\, \mu^{(0)} + m \cdot \frac{1}{B} \sum_{b=1}^{B} \mu_b^{(T)},
# \qquad m = \texttt{momentum} = 0.1 \ (\text{the paper's } \alpha = 0.9),
# $$
#
# just as BatchNorm tracks its running statistics: only in training mode, never in `eval()`.
# Under `torch.distributed` the batch mean is averaged over all processes first, so every
# replica holds the same bases.

# %%
print(inspect.getsource(EMAU._update_bases))

# %% [markdown]
# Check the formula on one step, and that evaluation leaves the bases alone:

# %%
unit = EMAU(C, num_bases=K).train()
x = torch.randn(4, C, H, W)
before = unit.mu.clone()
unit(x)
expected = (1 - unit.momentum) * before + unit.momentum * unit.last_bases.mean(dim=0)
print("train step follows the formula:", torch.allclose(unit.mu, expected, atol=1e-6))

unit.eval()
frozen = unit.mu.clone()
unit(x)
print("eval leaves mu unchanged:      ", torch.equal(unit.mu, frozen))

# %% [markdown]
# What the moving average buys: give the unit features with a fixed structure (every pixel is
# one of four unit directions, times a length $s$, plus noise), and watch $\mu^{(0)}$ over
# training steps. The left panel plots, averaged over the four true directions, the cosine
# similarity with the closest initial basis.
#
# With long features ($s = 5$) the bases settle on the four directions within a few dozen
# steps: from then on each batch starts its EM from bases that already fit, which is why
# $T = 3$ iterations suffice in EMANet. With short features ($s = 1$) they get there slowly and
# less exactly: with $\lambda = 1$ the logits $x_n^\top \mu_k$ are then small, every pixel is
# shared among several bases, and each basis is pulled towards its neighbours' pixels. The
# length of the features acts as the inverse temperature; in EMANet the backbone learns it.
#
# The right panel shows a side effect the `renormalize_bases` option addresses: the mean of
# unit vectors that point in slightly different directions is shorter than one, so with the
# official update (no re-normalisation) the initial bases lose length while they move, and
# regain it only once the batches agree on where they should be.

# %%
directions = torch.nn.functional.normalize(torch.randn(4, C), dim=1)  # (4, C)


def structured_batch(length, batch=4):
    labels = torch.randint(0, 4, (batch, H * W))
    pixels = length * directions[labels] + torch.randn(batch, H * W, C)  # (B, N, C)
    return pixels.mT.reshape(batch, C, H, W)  # (B, C, H, W)


def follow_bases(length, renormalize=False, steps=50):
    """Train-mode forward passes only (no optimiser): what the moving average alone does."""
    torch.manual_seed(1)
    unit = EMAU(C, num_bases=K, renormalize_bases=renormalize).train()
    with torch.no_grad():  # identity first convolution: the EM sees the features as they are
        unit.conv_in.weight.copy_(torch.eye(C).reshape(C, C, 1, 1))
        unit.conv_in.bias.zero_()
    cosines, norms = [], []
    for _ in range(steps):
        with torch.no_grad():
            unit(structured_batch(length))
        bases = torch.nn.functional.normalize(unit.mu, dim=1)
        cosines.append((directions @ bases.T).max(dim=1).values.mean().item())
        norms.append(unit.mu.norm(dim=1).mean().item())
    return cosines, norms


fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
for length in (1, 5):
    cosines, norms = follow_bases(length)
    left.plot(cosines, label=f"feature length s = {length}")
    if length == 5:
        right.plot(norms, label="official (no re-normalisation)")
right.plot(follow_bases(5, renormalize=True)[1], label="renormalize_bases=True")
left.set(xlabel="training step", ylabel="mean cosine to closest basis",
         title="initial bases find the data's directions")
right.set(xlabel="training step", ylabel=r"mean $\|\mu^{(0)}_k\|$",
          title="length of the bases (s = 5)")
left.legend()
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Why no gradient flows into the bases
#
# Two separate reasons, both visible in the code above:
#
# 1. $\mu^{(0)}$ is a buffer, so it is not in `parameters()` and no optimiser updates it.
# 2. The EM iterations run under `torch.no_grad()`. Back-propagating through $T$ rounds of
#    softmax and normalisation would treat the EM like a recurrent network, with the
#    vanishing and exploding gradients that brings; the paper instead lets the EM *find*
#    the bases and the moving average *keep* them.
#
# A consequence that is easy to miss: $z$ and $\mu^{(T)}$ are constants for autograd, so the
# reconstruction $\tilde X = z\,\mu^{(T)}$ carries no gradient back to the first
# $1\times1$ convolution. The gradient reaches the input $X$ only through the residual
# branch. After a backward pass `conv_in` has no gradient at all, while the output
# convolution does:

# %%
unit = EMAU(C, num_bases=K).train()
x = torch.randn(2, C, H, W, requires_grad=True)
unit(x).sum().backward()
for name, parameter in unit.named_parameters():
    grad = "None" if parameter.grad is None else f"|grad| = {parameter.grad.norm():.3g}"
    print(f"{name:16s} {grad}")
print(f"{'mu (buffer)':16s} requires_grad = {unit.mu.requires_grad}")

# %% [markdown]
# So in the official formulation the first convolution is moved only by weight decay: the
# unit learns through `conv_out`, `bn_out` and, most of all, through the backbone that feeds
# it, whose features the EM groups. Notebook 5 trains the whole network and looks at what
# the bases end up attending to.
