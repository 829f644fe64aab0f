# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# draws the unit and the network around it, rebuilds the unit's forward pass from its parts,
# checks that the EM inside it computes exactly what the NumPy stage computes, follows the
# moving average that carries the bases from one batch to the next, explains why the first
# convolution is a frozen random projection and what it is for, and finally looks at what the
# bases of a small trained EMANet, shipped with the package, attend to. Two exercises close it.
#
# On a feature map $X \in \mathbb{R}^{B \times C \times H \times W}$ with $N = HW$ pixels the
# unit computes
#
# $$
# \begin{aligned}
# X' &= \mathrm{conv}_{1\times1}(X) &&\text{(bias initialised to 0; weight and bias frozen)}\\
# z,\ \mu^{(T)},\ \tilde X &= \mathrm{EMA}\big(X',\ \mu^{(0)},\ T\big) &&\text{(}T\text{ iterations of A}_E\text{, A}_M\text{, then A}_R\text{, under no-grad)}\\
# Y &= \mathrm{ReLU}\Big(X + \mathrm{BN}\big(\mathrm{conv}_{1\times1}(\mathrm{ReLU}(\tilde X))\big)\Big) &&\text{(residual)}
# \end{aligned}
# $$

# %%
import json
import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch

import diagrams
from em_tutorial import ema
from em_tutorial.nn import EMAU
from em_tutorial.nn import functional as nnf
from em_tutorial.segmentation import build_val_set, figures
from em_tutorial.segmentation.ablation import read_rows
from em_tutorial.segmentation.paired_stats import paired_comparison
from em_tutorial.segmentation.runlog import read_json
from em_tutorial.segmentation.shipped import shipped_context_model

torch.manual_seed(0)
torch.set_num_threads(1)  # small tensors: one thread is as fast, and steadier on a busy machine
rng = np.random.default_rng(0)

# %% [markdown]
# ## The unit and the network, drawn
#
# Tensors are drawn as boxes whose sizes suggest their shapes, not measure them; grey
# operations receive no gradient
# (why is the subject of a section below), white ones are trained, and the orange buffer
# $\mu^{(0)}$ is moved by a moving average, not by the optimiser.

# %%
NO_GRAD = "#d9d9d9"
fig, ax = diagrams.canvas(42, 17, (15, 6.2), "The EM Attention Unit (EMAU)")
X_box = diagrams.tensor(ax, 0.5, 3, 2, 10, "$X$", "C × H × W")
conv_in = diagrams.operation(ax, 6, 8, 4.4, 2.8, "conv 1×1\nfrozen: a fixed\nrandom projection",
                             colour=NO_GRAD)
X_prime = diagrams.tensor(ax, 9.4, 3, 1.6, 10, "$X'$", "N × C")
em = diagrams.operation(ax, 15.9, 8, 7.4, 3.4, "EM attention\n"
                        r"T × (A$_E$: $z = \mathrm{softmax}(\lambda X'\mu^\top)$," "\n"
                        r"A$_M$: $\mu = $ normalise($z^\top X'$))", colour=NO_GRAD)
mu0 = diagrams.tensor(ax, 13.1, 14.3, 3, 1.2, r"$\mu^{(0)}$", "K × C, a buffer",
                      diagrams.BASES_COLOUR, shape_at="right")
a_r = diagrams.operation(ax, 22.7, 8, 3.2, 2.2, "A$_R$\n" r"$\tilde X = z\,\mu^{(T)}$",
                         colour=NO_GRAD)
X_tilde = diagrams.tensor(ax, 24.8, 3, 2, 10, r"$\tilde X$", "C × H × W")
head = diagrams.operation(ax, 30.2, 8, 4.6, 2.6, "ReLU\nconv 1×1\nBatchNorm")
plus = diagrams.operation(ax, 34.6, 8, 0.9, 0.9, "+", fontsize=14)
relu = diagrams.operation(ax, 37.0, 8, 1.8, 1.2, "ReLU")
Y_box = diagrams.tensor(ax, 39.3, 3, 2, 10, "$Y$", "C × H × W")
for start, end in ((diagrams.right_of(X_box), diagrams.left_of(conv_in, 0.1)),
                   (diagrams.right_of(conv_in, 0.1), diagrams.left_of(X_prime)),
                   (diagrams.right_of(X_prime), diagrams.left_of(em, 0.1)),
                   (diagrams.right_of(em, 0.1), diagrams.left_of(a_r, 0.1)),
                   (diagrams.right_of(a_r, 0.1), diagrams.left_of(X_tilde)),
                   (diagrams.right_of(X_tilde), diagrams.left_of(head, 0.1)),
                   (diagrams.right_of(head, 0.1), diagrams.left_of(plus, 0.1)),
                   (diagrams.right_of(plus, 0.1), diagrams.left_of(relu, 0.1)),
                   (diagrams.right_of(relu, 0.1), diagrams.left_of(Y_box))):
    diagrams.arrow(ax, start, end)
diagrams.arrow(ax, (14.0, 14.3), (14.0, 9.8))
diagrams.arrow(ax, (17.2, 9.8), (16.3, 14.3), colour="tab:red",
               text="moving average\n(training mode)", text_offset=(3.0, -0.6))
diagrams.arrow(ax, (1.5, 2.9), diagrams.bottom_of(plus, 0.1), curve=0.15, colour="tab:blue",
               text="identity: the gradient's only way back to $X$", text_offset=(0, -4.4))
ax.text(21, 16.6, "N = H W pixels, C channels, K bases", ha="center", fontsize=9)
plt.show()

# %% [markdown]
# EMANet puts the unit between two $3\times3$ convolutions on top of a dilated ResNet with
# output stride 8 (the paper's Fig. 2). The shapes are written for the paper's setting
# (ResNet-101, $C = 512$, $K = 64$) and, in brackets, for the small trained network shipped
# with the package, whose bases this notebook looks at in its last section (its sizes are
# read from the network itself); $h = w = S/8$.

# %%
model, model_config = shipped_context_model("emau")  # float32, eval mode; and its recipe
backbone_channels = model.fc0[0].in_channels  # the backbone's output, into the first 3x3 conv
unit_channels, num_bases = model.emau.channels, model.emau.num_bases
head_channels = model.fc1[0].out_channels

fig, ax = diagrams.canvas(45.5, 12, (15, 4.2), "EMANet")
x_position, boxes = 0.3, []
stages = [
    ("tensor", "image", "3 × S × S", 0.8, 9),
    ("op", "dilated ResNet\noutput stride 8", 5.0),
    ("tensor", "", f"2048 × h × w\n(small: {backbone_channels})", 2.4, 3.2),
    ("op", "3×3 conv\nBN, ReLU", 3.4),
    ("tensor", "", f"512 × h × w\n({unit_channels})", 1.6, 3.2),
    ("op", f"EMAU\nK = 64 ({num_bases}), T = 3", 4.6),
    ("tensor", "", f"512 × h × w\n({unit_channels})", 1.6, 3.2),
    ("op", "3×3 conv\nBN, ReLU", 3.4),
    ("tensor", "", f"256 × h × w\n({head_channels})", 1.2, 3.2),
    ("op", "dropout 0.1\n1×1 conv", 3.4),
    ("tensor", "", "classes × h × w", 0.8, 3.2),
    ("op", "bilinear\nupsampling ×8", 4.0),
    ("tensor", "logits", "classes × S × S", 0.8, 9),
]
for kind, *spec in stages:
    if kind == "tensor":
        name, shape, width, height = spec
        colour = diagrams.ATTENTION_COLOUR if name == "logits" else diagrams.TENSOR_COLOUR
        boxes.append(diagrams.tensor(ax, x_position, 6.5 - height / 2, width, height, "", shape,
                                     colour))
        ax.text(x_position + width / 2, 6.5 + height / 2 + 0.2, name, ha="center", fontsize=9)
        x_position += width + 0.9
    else:
        text, width = spec
        colour = diagrams.BASES_COLOUR if text.startswith("EMAU") else diagrams.OPERATION_COLOUR
        boxes.append(diagrams.operation(ax, x_position + width / 2, 6.5, width, 2.2, text,
                                        colour=colour, fontsize=8))
        x_position += width + 0.9
for left, right in zip(boxes, boxes[1:]):
    diagrams.arrow(ax, diagrams.right_of(left, 0.05), diagrams.left_of(right, 0.05))
plt.show()

# %% [markdown]
# ## The module, part by part
#
# The constructor draws the initial bases $\mu^{(0)}$ from a normal distribution with mean 0
# and standard deviation $\sqrt{2/K}$ and scales each to unit length (the scale of the draw
# does not matter, since each basis is then normalised). They are registered as a
# **buffer**, not a parameter: they are saved in the `state_dict` and moved by
# `.to(device)`, but the optimiser never sees them.

# %%
unit = EMAU(channels=16, num_bases=8, num_stages=3)
print(unit)
print("parameters:", [(name, p.requires_grad) for name, p in unit.named_parameters()])
print("buffers:   ", [name for name, _ in unit.named_buffers()])
print("mu:", tuple(unit.mu.shape), " row norms:", unit.mu.norm(dim=1)[:4].tolist(), "...")

# %% [markdown]
# The forward pass rebuilt from those parts, one line per line of the equation above, and
# checked against `unit(x)` (in evaluation mode, so that neither the bases nor BatchNorm's
# running statistics move). The EM itself is `em_tutorial.nn.functional.em_iterations`, the
# tensor twin of the NumPy `em_tutorial.ema.em_iterations`.

# %%
B, C, H, W, K = 2, 16, 12, 10, 8
unit = EMAU(C, num_bases=K, num_stages=3).eval()
x = torch.randn(B, C, H, W)

with torch.no_grad():
    x_prime = unit.conv_in(x).flatten(2).mT  # X' = conv(X): (B, C, H, W) -> (B, N, C)
    z, mu_T = nnf.em_iterations(x_prime, unit.mu, unit.num_stages, unit.lam)  # (B, N, K), (B, K, C)
    x_tilde = (z @ mu_T).mT.reshape(B, C, H, W)  # A_R: (B, N, K) @ (B, K, C) -> (B, C, H, W)
    y = F.relu(x + unit.bn_out(unit.conv_out(F.relu(x_tilde))))  # the residual
    torch.testing.assert_close(unit(x), y)
torch.testing.assert_close(unit.last_z, z)
print("EMAU.forward == conv_in, em_iterations, A_R, conv_out, BN, residual")

# %% [markdown]
# ## The same numbers as the NumPy stage
#
# Three implementations should agree: the NumPy function, the PyTorch function, and the EM
# that runs inside `EMAU.forward`. To isolate the last one, set the first $1\times1$
# convolution to the identity (weight $I$, bias 0): then $X' = X$ and the unit's attention maps
# `last_z` and final bases `last_bases` must be what the NumPy stage returns for the same
# input and initial bases. In float64 they agree to rounding.

# %%
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
# features such maps are noise, so this notebook shows them only at the end, on the features
# of a trained network.
#
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
# replica holds the same bases. The formula, checked on one step, and evaluation leaving the
# bases alone:

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
# steps: from then on each batch starts its EM from bases that already fit, which is what
# lets a few iterations suffice. With short features ($s = 1$) they get there slowly and
# less exactly: with $\lambda = 1$ the logits $x_n^\top \mu_k$ are then small, every pixel is
# shared among several bases, and each basis is pulled towards its neighbours' pixels. The
# length of the features acts as the inverse temperature. In EMANet that length is whatever
# training for the labels leaves the projected features with: as the next section shows, no
# gradient adjusts it for the EM's sake.
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


fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
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
# ## No gradient into the bases, none into the first convolution
#
# Two separate reasons keep gradients away from the bases:
#
# 1. $\mu^{(0)}$ is a buffer, so it is not in `parameters()` and no optimiser updates it.
# 2. The EM iterations run under `torch.no_grad()`. Back-propagating through $T$ rounds of
#    softmax and normalisation would treat the EM like a recurrent network, with the
#    vanishing and exploding gradients that brings; the paper instead lets the EM *find*
#    the bases and the moving average *keep* them.
#
# The second reason has a consequence that is easy to miss. $z$ and $\mu^{(T)}$ are constants
# for autograd, so the reconstruction $\tilde X = z\,\mu^{(T)}$, and with it everything the
# loss sees, does not depend on the first $1\times1$ convolution: its gradient is not zero
# but *absent* (`None`). The gradient reaches the input $X$ only through the residual
# branch. The package marks `conv_in` frozen; to see that the no-grad EM alone cuts it off,
# make it trainable again first. After a backward pass:

# %%
unit = EMAU(C, num_bases=K).train()
unit.conv_in.requires_grad_(True)  # even if it could train, no gradient reaches it
x = torch.randn(2, C, H, W, requires_grad=True)
unit(x).sum().backward()
for name, parameter in unit.named_parameters():
    grad = "None" if parameter.grad is None else f"|grad| = {parameter.grad.norm():.3g}"
    print(f"{name:16s} requires_grad={parameter.requires_grad!s:5s}  {grad}")
print(f"{'mu (buffer)':16s} requires_grad = {unit.mu.requires_grad}")
assert unit.conv_in.weight.requires_grad and unit.conv_in.weight.grad is None

# %% [markdown]
# A parameter whose gradient is `None` is skipped by `torch.optim.SGD` entirely: no step, no
# momentum and **no weight decay** either (the decay is added to the gradient, and there is
# none to add it to). So `conv_in` keeps its random initial weights for the whole of
# training, in the official code as here; the package also marks it frozen
# (`requires_grad=False`), as mmsegmentation does. One SGD step with momentum and weight
# decay, as in EMANet's recipe, on the unit above, whose `conv_in` is still trainable:

# %%
optimizer = torch.optim.SGD(unit.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
before = {name: p.detach().clone() for name, p in unit.named_parameters()}
optimizer.zero_grad()
unit(torch.randn(2, C, H, W)).sum().backward()
optimizer.step()
for name, parameter in unit.named_parameters():
    print(f"{name:16s} changed by the step: {not torch.equal(before[name], parameter)}")
assert unit.conv_in.weight.requires_grad and torch.equal(before["conv_in.weight"],
                                                         unit.conv_in.weight)

# %% [markdown]
# The EM therefore runs on a **fixed random projection** $X' = W X + b$ of the features, with
# $W$ drawn once (Kaiming normal) and $b = 0$ under the default initialisation. It loses
# nothing in principle: a random square matrix is invertible (if badly conditioned). But it
# is not a rotation: it stretches some directions and shrinks others, as the spread of its
# singular values shows, so angles between features, which is what A$_E$ compares, are
# distorted in a fixed way. For the paper's $C = 512$:

# %%
assert not model.emau.conv_in.bias.any()  # b = 0 in the shipped network too
projection = EMAU(512, num_bases=64).conv_in.weight.detach().reshape(512, 512)  # (C, C)
singular_values = torch.linalg.svdvals(projection)
print(f"singular values of W: largest {singular_values[0]:.3f}, median "
      f"{singular_values.median():.3f}, smallest {singular_values[-1]:.2e} "
      f"(condition number {singular_values[0] / singular_values[-1]:.0f})")

# %% [markdown]
# ### What the first convolution is for
#
# Why have the convolution at all? The authors' answer, given in their repository's issue
# tracker (XiaLiPKU/EMANet, issue 14): the unit's input comes straight out of a ReLU, so every
# feature lies in the non-negative orthant $\mathbb{R}_+^C$, and so would every basis, since a
# basis is a normalised weighted mean of features. The $1\times1$ convolution maps the
# features from $\mathbb{R}_+^C$ to all of $\mathbb{R}^C$, so that features and bases can have
# negative components. Between two non-negative vectors the cosine is never negative: no two
# features could point in opposite directions, and the E-step's logits $x_n^\top\mu_k$
# would all be $\ge 0$.
#
# That job needs no training: a random linear map already mixes the signs. The trained
# network of the last section shows it on a validation scene (the network and the scene are
# introduced there): the unit's input $X$ and its projection $X' = \mathrm{conv}_{1\times1}(X)$,
# captured during a forward pass.

# %%
scenes = build_val_set(model_config, num_scenes=4)  # the validation scenes it was scored on
image, label = scenes[1]  # normalised (3, S, S) tensor, (S, S) labels
captured = {}
hook = model.emau.register_forward_hook(
    lambda module, inputs, output: captured.update(x=inputs[0], x_prime=module.conv_in(inputs[0])))
with torch.no_grad():
    model(torch.as_tensor(image)[None])
hook.remove()
print(f"{'':30s} {'X (the input)':>14s} {'conv(X)':>12s}")
features = {name: captured[name][0].flatten(1).mT for name in ("x", "x_prime")}  # (N, C) each
for what, statistic in (("share of negative components", lambda f: (f < 0).float().mean()),
                        ("smallest cosine of two pixels",
                         lambda f: (F.normalize(f, dim=1) @ F.normalize(f, dim=1).T).min())):
    print(f"{what:30s} {statistic(features['x']):14.3f} {statistic(features['x_prime']):12.3f}")

# %% [markdown]
# What does training adapt, then? Not the grouping. The previous section showed that no
# gradient passes through the EM, so nothing in the loss asks the backbone for features whose
# projections group well. The backbone and the $3\times3$ convolution before the unit are
# trained through the residual branch alone, to make $X$ itself useful to the layers after the
# unit; `conv_out` and BatchNorm are trained to make use of the reconstruction $\tilde X$ as
# the EM delivers it. The EM groups whatever features that training produces: if the features
# of one class end up close together because the classifier needs them so, the bases find those
# groups, as a by-product of training for the labels, not as its aim.
#
# ## Attention maps of a trained network
#
# On random features the maps are noise, so look at a network that has learned. The package
# ships two small trained networks (`em_tutorial/segmentation/shipped/`): seed 0 of the
# experiment that notebook 5 reads, without and with the EMAU, trained by
# `em-tutorial ablate` on the *context scenes*: digits of scikit-learn's 8×8 data set painted
# on textured $S \times S$ backgrounds, labelled per pixel with their digit, one class per
# scene. The one with the EMAU was trained with this recipe:

# %%
print(f"{model_config.iterations} iterations, batch {model_config.batch_size}, "
      f"{model_config.image_size}-px scenes; feature map "
      f"{captured['x'].shape[-2]}x{captured['x'].shape[-1]}, "
      f"C = {unit_channels}, K = {num_bases}")

# %% [markdown]
# The experiment kept each run's training log, `results/ablation/logs/<run>/log.jsonl` (the
# loss of one batch of 8 scenes every 10 iterations), and its scores on the validation scenes
# at the end, `summary.json`. The shipped network is run `context-emau-seed0`; run
# `context-none-seed0` is the same recipe and seed without the EMAU. Both started from the same
# backbone, pre-trained on the plain digit scenes in run `control-none-seed0`. Their training
# curves, on the same axes, and their final scores:

# %%
results = Path(os.environ.get("EM_TUTORIAL_RESULTS", "../results/ablation"))
runs = {"with the EMAU": results / "logs/context-emau-seed0",
        "without (head 'none')": results / "logs/context-none-seed0"}
display(figures.training_curves_figure({name: run / "log.jsonl" for name, run in runs.items()}))
scores = {}
for name, run in runs.items():
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    late_losses = [r["loss"] for r in records
                   if r["event"] == "train" and r["iteration"] > model_config.iterations - 100]
    scores[name] = read_json(run / "summary.json")["metrics"]
    print(f"{name:22s} mean loss over the last 100 iterations {np.mean(late_losses):.3f}; "
          f"validation ({model_config.val_scenes} scenes): mIoU {scores[name]['miou']:.3f}, "
          f"pixel accuracy {scores[name]['pixel_accuracy']:.3f}")
with_emau, without = scores.values()
print(f"with minus without, on this seed: pixel accuracy "
      f"{with_emau['pixel_accuracy'] - without['pixel_accuracy']:+.3f}, "
      f"mIoU {with_emau['miou'] - without['miou']:+.3f}")

ablation_rows = read_rows(results / "ablation.csv")  # the experiment's ten seeds
context_miou = {(r["head"], r["seed"]): r["miou"] for r in ablation_rows if r["task"] == "context"}
ablation_seeds = sorted(s for h, s in context_miou if h == "emau" and ("none", s) in context_miou)
over_seeds = paired_comparison([context_miou["emau", s] for s in ablation_seeds],
                               [context_miou["none", s] for s in ablation_seeds])
print(f"over {over_seeds['n']} seeds, mIoU with minus without: "
      f"{100 * over_seeds['mean']:+.1f} points (paired 95 % CI {100 * over_seeds['ci'][0]:+.1f} "
      f"to {100 * over_seeds['ci'][1]:+.1f}), higher on {over_seeds['positive']} of "
      f"{over_seeds['n']} seeds")

# %% [markdown]
# Both losses fall fast in the first few dozen iterations, then slowly, and stay close
# together for the second half of training (their means over the last 100 iterations are
# printed above). The training loss and the pixel accuracy, averages over pixels that are
# mostly background, hardly tell the two networks apart; the mIoU, an average over the
# classes in which a digit's few pixels weigh as much as the whole background, does, on this
# seed. One seed is one draw: the last line reads the same comparison over the experiment's
# ten seeds, which notebook 5 examines, with where on the digits the gain lies.

# %% [markdown]
# ### What its bases attend to
#
# The figure below shows the second validation scene. Top row: the image, its labels, the
# network's prediction, and the basis that explains each feature cell best,
# $\arg\max_k z_{nk}$ (shades of one blue-to-yellow ramp, *cividis*, so that no basis wears a
# class's colour). Below, the map of each basis, column $k$ of $z$ on the $h \times w$ feature
# map, over the faded image, all on one colour scale.

# %%
prediction, maps = figures.emau_maps(model, image)  # (S, S), (K, h, w)
picture, truth = scenes.raw(1)  # (S, S, 3) uint8, (S, S)
num_classes, extent = len(scenes.class_names), (0, truth.shape[1], truth.shape[0], 0)
columns = 4
fig, axes = plt.subplots(1 + math.ceil(num_bases / columns), columns, figsize=(11, 9),
                         layout="constrained")
for ax in axes.flat:
    ax.set_axis_off()
for ax, shown, title in zip(axes[0], (picture, figures.colorize(truth, num_classes),
                                      figures.colorize(prediction, num_classes)),
                            ("image", "labels", "prediction")):
    ax.imshow(shown, interpolation="nearest")
    ax.set_title(title)
basis_colours = ListedColormap(plt.colormaps["cividis"](np.linspace(0, 1, num_bases)))
best = axes[0, 3].imshow(maps.argmax(axis=0), cmap=basis_colours, extent=extent,
                         norm=BoundaryNorm(np.arange(num_bases + 1) - 0.5, num_bases),
                         interpolation="nearest")
axes[0, 3].set_title(r"best basis, $\arg\max_k z_{nk}$")
fig.colorbar(best, ax=axes[0, 3], ticks=range(num_bases), label="basis k", shrink=0.8)
for k, ax in enumerate(axes[1:].flat[:num_bases]):
    ax.imshow(picture, alpha=0.35, extent=extent)
    heat = ax.imshow(maps[k], cmap="magma", alpha=0.8, vmin=0, vmax=maps.max(), extent=extent,
                     interpolation="nearest")
    ax.set_title(f"basis {k}: $z_{{n{k}}}$")
fig.colorbar(heat, ax=axes[1:].ravel().tolist(), shrink=0.6, label="responsibility $z_{nk}$")
fig.legend(handles=[Patch(color=c / 255, label=name) for c, name in
                    zip(figures.label_palette(num_classes), scenes.class_names)],
           loc="outside lower center", ncol=num_classes, fontsize=8, frameon=False)
plt.show()

# %% [markdown]
# The background maps look alike, and the printout says why: the learned initial bases
# $\mu^{(0)}$, compared by cosine, fall into fewer distinct directions than there are bases.
# Then, for each basis, its mean responsibility on the feature cells that are mostly ink (at
# least half of the cell's pixels) and on those without any ink, on this scene:

# %%
initial_bases = F.normalize(model.emau.mu, dim=1)  # (K, C): the learned mu^(0), unit length
same_direction = (initial_bases @ initial_bases.T) > 0.999  # (K, K)
groups = sorted({tuple(np.flatnonzero(row).tolist()) for row in same_direction.numpy()})
print(f"{num_bases} initial bases, {len(groups)} distinct directions: {groups}")
largest_distance = max(torch.cdist(model.emau.mu[list(g)], model.emau.mu[list(g)]).max().item()
                       for g in groups)  # within a group, unnormalised bases
print(f"largest distance between two bases of one group: {largest_distance}")

stride = truth.shape[0] // maps.shape[1]  # output stride: pixels per feature cell
h, w = maps.shape[1:]
ink_share = (truth > 0).reshape(h, stride, w, stride).mean(axis=(1, 3))  # (h, w): ink per cell
for k in range(num_bases):
    print(f"basis {k}: mean z on ink cells {maps[k][ink_share >= 0.5].mean():.2f}, "
          f"on cells without ink {maps[k][ink_share == 0].mean():.2f}")

# %% [markdown]
# Read together, the figure and the printout show what the network learned to do with its
# bases on this task:
#
# - most of the initial bases have merged into one: within the group they are identical
#   (the largest distance between two of them is printed, 0). Identical bases never
#   separate again: bases that start equal receive equal responsibilities in A$_E$ and so
#   equal updates in A$_M$, batch after batch. They share the background evenly, and the arg max,
#   which breaks a tie in favour of the lowest index, paints the whole background with the
#   first of them;
# - the remaining bases take the digits' ink and divide it between them, each responsible
#   for different parts of the strokes, wherever in the scene the digits are.
#
# So the division of labour is between ink and background, and, within the ink, between
# parts of the strokes; $K$ was larger than this task needed. No label said which basis should
# do what, and no gradient reached the bases: the EM grouped the features that training for
# the labels produced, and the moving average carried those groups from batch to batch.
# Notebook 5 measures what this buys: on the context scenes, a fragment of a digit cut by the
# border gets its class from a whole digit far away, through the bases they share.
#
# ## Exercises
#
# Each exercise leaves an answer set to `None`. Replace it and run the hidden cell after it
# (click the "..." to see its code): it says *not yet* while the answer is `None`, *right* or
# *not right* once there is one.
#
# **Exercise 1: what trains in an EMAU.** How many numbers does the optimiser update in an
# EMAU with $C = 512$ channels and $K = 64$ bases (the paper's unit)? Count them from the
# drawing and the module printed above, not by calling `parameters()`: which operations are
# white, and what does each hold?

# %% tags=["exercise"]
trainable_numbers = None  # your answer here: an integer

# %% tags=["check"] jupyter={"source_hidden": true}
from exercises import check

_paper_unit = EMAU(512, num_bases=64)
check("Exercise 1", trainable_numbers,
      sum(p.numel() for p in _paper_unit.parameters() if p.requires_grad),
      "only the white boxes of the drawing train; the unit printed under 'The module, part "
      "by part' shows which of its convolutions has a bias.")

# %% [markdown]
# **Exercise 2: the moving average after n steps.** Start from bases $\mu^{(0)}$ and let every
# training batch end its EM at the same bases $M$.
#
# (a) Write $\mu^{(0)}$ after $n$ steps in closed form (momentum $m$).
#
# (b) With the EMAU's default momentum, after how many steps has $\mu^{(0)}$ covered at least
# 99 % of its distance to $M$? Answer with the smallest such integer.
#
# (c) The right panel of the moving-average figure shows the bases' length dipping below 1.
# Take one step from a unit $\mu^{(0)}_k$ towards a unit $M_k$ at angle $\theta$ to it: what
# is $\|\mu^{(0)}_k\|$ after the step, as a function of $m$ and $\theta$? The check runs
# one training step of an EMAU (official update, no re-normalisation) on a batch of one
# feature map, whose final bases are unit vectors, and compares your lengths with the
# unit's, basis by basis.

# %% tags=["exercise"]
def bases_after(mu_0, M, m, n):
    """mu^(0) after n moving-average steps towards M; mu_0, M: (K, C) tensors."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
_mu_0, _M = torch.randn(K, C, dtype=torch.float64), torch.randn(K, C, dtype=torch.float64)
_expected = _mu_0.clone()
for _ in range(7):
    _expected = (1 - 0.1) * _expected + 0.1 * _M
check("Exercise 2a", lambda: bases_after(_mu_0, _M, 0.1, 7), _expected.numpy(),
      "write mu^(0) - M after one step, then after two.")

# %% tags=["exercise"]
steps_to_99_percent = None  # (b) your answer here: an integer


def length_after_one_step(m, theta):
    """(c) ||mu^(0)_k|| after one step from unit mu^(0)_k towards unit M_k at angle theta.

    m: the momentum, a number; theta: NumPy array of angles, one per basis, in radians.
    """
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
_momentum, _left, _steps = EMAU(C, num_bases=K).momentum, 1.0, 0
while _left > 0.01:  # the share of the distance to M still left, one update at a time
    _left, _steps = (1 - _momentum) * _left, _steps + 1
check("Exercise 2b", steps_to_99_percent, _steps,
      "use (a): what share of the distance to M is left after n steps? Take logarithms, and "
      "remember that a count of steps is a whole number.")

_unit = EMAU(C, num_bases=K).double().train()
_start = _unit.mu.clone()  # (K, C), unit rows
with torch.no_grad():
    _unit(torch.randn(1, C, H, W, dtype=torch.float64))  # one feature map: M = its final bases
_final = _unit.last_bases[0]  # (K, C), unit rows: M of the exercise
_theta = torch.arccos((_start * _final).sum(dim=1).clamp(-1, 1)).numpy()  # (K,)
check("Exercise 2c", lambda: length_after_one_step(_unit.momentum, _theta),
      _unit.mu.norm(dim=1).numpy(),
      "the new mu^(0)_k is a weighted sum of two unit vectors; expand its squared length as a "
      "dot product with itself, and use what the dot product of two unit vectors is.")

