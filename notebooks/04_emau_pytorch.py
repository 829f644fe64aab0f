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
# draws the unit and the network around it, rebuilds the unit's forward pass from its parts,
# checks that the EM inside it computes exactly what the NumPy stage computes, follows the
# moving average that carries the bases from one batch to the next, explains why the first
# convolution is a frozen random projection, and finally trains a tiny EMANet for a few
# hundred steps to look at what its bases attend to. Two exercises close it.
#
# On a feature map $X \in \mathbb{R}^{B \times C \times H \times W}$ with $N = HW$ pixels the
# unit computes
#
# $$
# \begin{aligned}
# X' &= \mathrm{conv}_{1\times1}(X) &&\text{(with bias; frozen at its random initial values)}\\
# z,\ \mu^{(T)},\ \tilde X &= \mathrm{EMA}\big(X',\ \mu^{(0)},\ T\big) &&\text{(}T\text{ iterations of A}_E\text{, A}_M\text{, then A}_R\text{, under no-grad)}\\
# Y &= \mathrm{ReLU}\Big(X + \mathrm{BN}\big(\mathrm{conv}_{1\times1}(\mathrm{ReLU}(\tilde X))\big)\Big) &&\text{(residual)}
# \end{aligned}
# $$

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display

import diagrams
from em_tutorial import ema
from em_tutorial.nn import EMAU
from em_tutorial.nn import functional as nnf
from em_tutorial.segmentation import TrainConfig, figures, train
from em_tutorial.segmentation.data import DigitScenes, SceneConfig

torch.manual_seed(0)
torch.set_num_threads(1)  # small tensors: one thread is as fast, and steadier on a busy machine
rng = np.random.default_rng(0)

# %% [markdown]
# ## The unit and the network, drawn
#
# Tensors are drawn at shapes proportional to theirs; grey operations receive no gradient
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
# (ResNet-101, $C = 512$, $K = 64$) and, in brackets, for `emanet_tiny`, the CPU-sized
# network trained at the end of this notebook ($C = 64$, $K = 16$); $h = w = S/8$.

# %%
fig, ax = diagrams.canvas(45.5, 12, (15, 4.2), "EMANet")
x_position, boxes = 0.3, []
stages = [
    ("tensor", "image", "3 × S × S", 0.8, 9),
    ("op", "dilated ResNet\noutput stride 8", 5.0),
    ("tensor", "", "2048 × h × w\n(tiny: 256)", 2.4, 3.2),
    ("op", "3×3 conv\nBN, ReLU", 3.4),
    ("tensor", "", "512 × h × w\n(64)", 1.6, 3.2),
    ("op", "EMAU\nK = 64 (16), T = 3", 4.6),
    ("tensor", "", "512 × h × w\n(64)", 1.6, 3.2),
    ("op", "3×3 conv\nBN, ReLU", 3.4),
    ("tensor", "", "256 × h × w\n(32)", 1.2, 3.2),
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
# The constructor draws the initial bases $\mu^{(0)} \sim \mathcal{N}(0, \sqrt{2/K})$ and
# scales each to unit length. They are registered as a **buffer**, not a parameter: they are
# saved in the `state_dict` and moved by `.to(device)`, but the optimiser never sees them.

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
# branch. After a backward pass:

# %%
unit = EMAU(C, num_bases=K).train()
x = torch.randn(2, C, H, W, requires_grad=True)
unit(x).sum().backward()
for name, parameter in unit.named_parameters():
    grad = "None" if parameter.grad is None else f"|grad| = {parameter.grad.norm():.3g}"
    print(f"{name:16s} requires_grad={parameter.requires_grad!s:5s}  {grad}")
print(f"{'mu (buffer)':16s} requires_grad = {unit.mu.requires_grad}")

# %% [markdown]
# A parameter whose gradient is `None` is skipped by `torch.optim.SGD` entirely: no step, no
# momentum and **no weight decay** either (the decay is added to the gradient, and there is
# none to add it to). So `conv_in` keeps its random initial weights for the whole of
# training, in the official code as here; the package states it by marking the convolution
# frozen (`requires_grad=False`), as mmsegmentation does. One SGD step with momentum and
# weight decay, as in EMANet's recipe:

# %%
optimizer = torch.optim.SGD(unit.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
before = {name: p.detach().clone() for name, p in unit.named_parameters()}
optimizer.zero_grad()
unit(torch.randn(2, C, H, W)).sum().backward()
optimizer.step()
for name, parameter in unit.named_parameters():
    print(f"{name:16s} changed by the step: {not torch.equal(before[name], parameter)}")
assert torch.equal(before["conv_in.weight"], unit.conv_in.weight)

# %% [markdown]
# The EM therefore runs on a **fixed random projection** $X' = W X + b$ of the features, with
# $W$ drawn once (Kaiming normal) and $b = 0$ under the default initialisation. It loses
# nothing in principle: a random square matrix is invertible (if badly conditioned). But it
# is not a rotation: it stretches some directions and shrinks others, as the spread of its
# singular values shows, so angles between features, which is what A$_E$ compares, are
# distorted in a fixed way. What adapts is everything around it: the backbone and the
# $3\times3$ convolution before the unit learn to produce features whose *projections* group
# well, and `conv_out` and BatchNorm learn to use the reconstruction. For the paper's $C = 512$:

# %%
projection = EMAU(512, num_bases=64).conv_in.weight.detach().reshape(512, 512)  # (C, C)
singular_values = torch.linalg.svdvals(projection)
print(f"singular values of W: largest {singular_values[0]:.3f}, median "
      f"{singular_values.median():.3f}, smallest {singular_values[-1]:.2e} "
      f"(condition number {singular_values[0] / singular_values[-1]:.0f})")

# %% [markdown]
# ## Attention maps of a trained network
#
# On random features the maps are noise, so train the network. This notebook trains
# `emanet_tiny` itself, from scratch and always the same way (the tour's checkpoint is not
# used): 300 SGD iterations, batches of 8, on 64×64 digit scenes (digits of scikit-learn's
# data set painted on textured backgrounds, labelled per pixel with their digit; notebook 5
# describes them and trains for longer). That takes under a minute on one CPU thread; the
# network is far from converged, but its bases already attend to parts of the scene.

# %%
workdir = tempfile.TemporaryDirectory()  # the run's checkpoint and log; removed at the end
config = TrainConfig(dataset="digits", image_size=64, iterations=300, batch_size=8, lr=0.1,
                     num_scenes=600, val_scenes=48, seed=0, threads=1, progress=False,
                     out_dir=workdir.name)
run = train(config)
model = run["model"].eval()
print(f"trained {run['iterations']} iterations in {run['train_seconds']:.0f} s, final loss "
      f"{run['final_loss']:.3f}, validation mIoU {run['metrics']['miou']:.3f} "
      f"(48 scenes; the EMAU sees {model.emau.channels} channels, K = {model.emau.num_bases})")

# %%
val_set = DigitScenes("val", 48, seed=0, config=SceneConfig(image_size=64))
image, label = val_set[3]  # normalised (3, S, S) tensor, (S, S) labels
attention = figures.attention_figure(model, image, label, class_names=val_set.class_names)
display(attention)

# %% [markdown]
# Each map is one column of $z$, on the $8\times8$ feature map (output stride 8) of this
# $64\times64$ scene, drawn over the image on one colour scale for all bases. After only 300
# iterations the prediction is still poor, yet the division of labour has begun: several
# bases light up on parts of the two digits (a top, a left stroke, a centre), while the others
# share the background almost evenly. No label said which basis should do what; the EM
# groups the projected features, and training made those features worth grouping. Notebook 5
# trains longer and compares with the same network without the unit.
#
# ## Exercises
#
# Each exercise leaves an answer set to `None`. Replace it and run the hidden cell after it
# (click the "..." to see its code): it says *not yet* while the answer is `None`, *right* or
# *not right* once there is one.
#
# **Exercise 1: what trains in an EMAU.** How many numbers does the optimiser update in an
# EMAU with $C = 512$ channels and $K = 64$ bases (the paper's unit)? Count them from the
# drawing, not from the code: which operations are white?

# %% tags=["exercise"]
trainable_numbers = None  # your answer here: an integer

# %% tags=["check"] jupyter={"source_hidden": true}
from exercises import check

_paper_unit = EMAU(512, num_bases=64)
check("Exercise 1", trainable_numbers,
      sum(p.numel() for p in _paper_unit.parameters() if p.requires_grad),
      "conv_out (no bias) and the BatchNorm's weight and bias; conv_in is frozen, mu a buffer.")

# %% [markdown]
# **Exercise 2: the moving average after n steps.** Start from bases $\mu^{(0)}$ and let every
# training batch end its EM at the same bases $M$. Write $\mu^{(0)}$ after $n$ steps in closed
# form (momentum $m$).

# %% tags=["exercise"]
def bases_after(mu_0, M, m, n):
    """mu^(0) after n moving-average steps towards M; mu_0, M: (K, C) tensors."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
_mu_0, _M = torch.randn(K, C, dtype=torch.float64), torch.randn(K, C, dtype=torch.float64)
_expected = _mu_0.clone()
for _ in range(7):
    _expected = (1 - 0.1) * _expected + 0.1 * _M
_answer = bases_after(_mu_0, _M, 0.1, 7)
check("Exercise 2", None if _answer is None else np.asarray(_answer), _expected.numpy(),
      "each step keeps (1 - m) of the distance to M.")

# %%
workdir.cleanup()
