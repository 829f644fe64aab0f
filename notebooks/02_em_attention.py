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
# # 2. From the Gaussian mixture to EM attention
#
# Notebook 1 fitted full Gaussian mixtures. EMANet runs something much leaner on every
# feature map: three EM iterations with a fixed kernel, no covariances, no mixing weights.
# This notebook derives that special case from the mixture, including its L2 normalisation,
# which turns out to be the M-step under the unit-length constraint the derivation assumes
# (EM for a von Mises-Fisher mixture). It then looks at the two knobs (the inverse
# temperature $\lambda$ and that normalisation), at what the reconstruction with $K$ bases
# keeps and loses, with sliders to explore (and their figures precomputed, for a page without
# a kernel), and at the non-local block as the case where every pixel is a basis, with what
# EM attention saves against it counted. Three exercises close it.

# %%
import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from scipy.special import softmax
from sklearn.datasets import load_sample_image
from sklearn.decomposition import PCA

import diagrams
from em_tutorial import ema, gmm, non_local

rng = np.random.default_rng(0)

# %% [markdown]
# ## The E-step: a softmax of dot products
#
# Start from the mixture's E-step (5) and make three choices: spherical covariances
# $\Sigma_k = \sigma^2 I$, uniform mixing weights $\pi_k = 1/K$, and unit-length pixels
# and means, $\lVert x_n \rVert = \lVert \mu_k \rVert = 1$. The log-density of component $k$ is
#
# $$
# \ln \mathcal{N}(x_n \mid \mu_k, \sigma^2 I)
# = -\frac{\lVert x_n \rVert^2 - 2\, x_n^\top \mu_k + \lVert \mu_k \rVert^2}{2\sigma^2}
#   - \frac{C}{2} \ln(2\pi\sigma^2)
# = \frac{x_n^\top \mu_k}{\sigma^2} + \underbrace{\Big(-\frac{1}{\sigma^2} - \frac{C}{2}\ln(2\pi\sigma^2)\Big)}_{\text{the same for every } k},
# $$
#
# and a term that is the same for every $k$ cancels between the numerator and the
# denominator of (5). What is left is a softmax over the bases of a dot product, written
# $z_{nk}$ as in the EMANet paper and in `em_tutorial.ema`: in this notebook $z_{nk}$ *is* the
# responsibility $\gamma(z_{nk})$ of notebook 1 (no 0/1 indicator appears here), and the
# $N \times K$ matrix $Z$ of them is EMANet's attention map.
#
# $$
# \text{A}_E:\quad z_{nk} = \frac{\exp(\lambda\, x_n^\top \mu_k)}{\sum_{j=1}^{K} \exp(\lambda\, x_n^\top \mu_j)},
# \qquad \lambda = \frac{1}{\sigma^2}.
# $$
#
# Two checks: the formula in two lines of NumPy equals the package's A$_E$, and the general
# E-step of `em_tutorial.gmm` on the spherical mixture that `ema.spherical_gmm_parameters`
# writes down (means $\mu$, precision $\sqrt{\lambda}$, uniform weights) gives the same
# responsibilities. Unit-length pixels are more than it needs: $\lVert x_n \rVert^2$ is the
# same for every $k$ and cancels whatever it is; the bases must share one length, or
# $-\lambda \lVert \mu_k \rVert^2 / 2$ stays in the logits (exercise 1).

# %%
N, C, K, lam = 500, 16, 8, 4.0
x = rng.standard_normal((N, C))
x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit-length pixels
mu = rng.standard_normal((K, C))
mu /= np.linalg.norm(mu, axis=1, keepdims=True)  # unit-length bases

z = softmax(lam * x @ mu.T, axis=1)  # (N, C) @ (C, K) -> (N, K): A_E by its formula
np.testing.assert_allclose(ema.attention_e_step(x, mu, lam), z, rtol=1e-12)
np.testing.assert_allclose(gmm.e_step(x, **ema.spherical_gmm_parameters(mu, lam)), z, rtol=1e-9)
print("A_E: formula == ema.attention_e_step == gmm.e_step on the spherical mixture")

# %% [markdown]
# ## The M-step: a mean, then back onto the sphere
#
# The mixture's M-step (7) keeps only its mean update, since covariances and weights are
# fixed. But the derivation above *assumed* $\lVert \mu_k \rVert = 1$, so the M-step must
# maximise $Q$ over unit vectors only. The part of $Q$ that depends on $\mu_k$ is, with unit
# bases, $\lambda \sum_n z_{nk}\, x_n^\top \mu_k$ (plus constants); with a Lagrange multiplier
# $\beta_k$ for the constraint $\mu_k^\top \mu_k = 1$,
#
# $$
# \frac{\partial}{\partial \mu_k}\Big[\lambda \sum_n z_{nk}\, x_n^\top \mu_k - \beta_k(\mu_k^\top \mu_k - 1)\Big]
# = \lambda \sum_n z_{nk}\, x_n - 2\beta_k\, \mu_k = 0
# \quad\Longrightarrow\quad
# \mu_k = \frac{\sum_n z_{nk}\, x_n}{\big\lVert \sum_n z_{nk}\, x_n \big\rVert}.
# $$
#
# The weighted mean, then divided by its length: dividing by $N_k = \sum_n z_{nk}$ first
# changes nothing in the direction. That is exactly EMANet's A$_M$ with its L2 normalisation,
#
# $$
# \text{A}_M:\quad \mu_k = \frac{\sum_n z_{nk}\, x_n}{\epsilon + \sum_n z_{nk}},
# \qquad \mu_k \leftarrow \frac{\mu_k}{\epsilon + \lVert \mu_k \rVert},
# \qquad \epsilon = 10^{-6}.
# $$
#
# So the L2 step is not an addition to EM: it is the M-step of the constrained model. With
# unit-length data this model is a mixture of **von Mises-Fisher** distributions on the
# sphere, $p(x \mid \mu_k) \propto \exp(\kappa\, \mu_k^\top x)$, with one shared, fixed
# concentration $\kappa = \lambda$; its EM (Banerjee et al., JMLR 2005) has precisely these
# two steps. The check: the constrained maximiser equals the package's A$_M$ (up to
# $\epsilon$), and no unit vector among 20 000 random ones scores a higher $Q$.

# %%
weighted_sum = z.T @ x  # (K, N) @ (N, C) -> (K, C): sum_n z_nk x_n
constrained = weighted_sum / np.linalg.norm(weighted_sum, axis=1, keepdims=True)  # (K, C)
package = ema.l2_normalize(ema.attention_m_step(x, z))
np.testing.assert_allclose(package, constrained, rtol=1e-5)

candidates = ema.l2_normalize(rng.standard_normal((20_000, C)))  # (M, C), random unit vectors
q_candidates = weighted_sum @ candidates.T  # (K, M): sum_n z_nk x_n^T mu for every candidate
q_ours = np.sum(weighted_sum * constrained, axis=1)  # (K,)
assert np.all(q_ours >= q_candidates.max(axis=1))
print("A_M + L2 == the constrained maximiser of Q; best random unit vector reaches "
      f"{np.mean(q_candidates.max(axis=1) / q_ours):.0%} of its Q (mean over bases)")

# %% [markdown]
# After $T$ iterations the reconstruction (8) re-expresses every pixel with the bases,
# A$_R$: $\tilde x_n = \sum_k z_{nk}\, \mu_k$. The whole of EM attention, written out and
# checked against `ema.em_attention`, and drawn with the tensors at their shapes:

# %%
def em_attention_by_formula(x, mu, n_iter=3, lam=1.0, eps=1e-6):
    for _ in range(n_iter):
        z = softmax(lam * x @ mu.T, axis=-1)  # A_E: (N, K)
        mu = z.T @ x / (eps + z.sum(axis=0)[:, None])  # A_M: (K, N) @ (N, C) -> (K, C)
        mu = mu / (eps + np.linalg.norm(mu, axis=1, keepdims=True))  # back onto the sphere
    return z, mu, z @ mu  # A_R: (N, K) @ (K, C) -> (N, C)


for ours, theirs in zip(em_attention_by_formula(x, mu, lam=lam), ema.em_attention(x, mu, lam=lam)):
    np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-14)
print("EM attention: formula == ema.em_attention")

# %%
fig, ax = diagrams.canvas(36, 16, (14, 6.3),
                          r"EM attention: T iterations of A$_E$ and A$_M$, then A$_R$")
X_box = diagrams.tensor(ax, 0.5, 2, 3, 10, "$X$", "N × C")
mu0 = diagrams.tensor(ax, 5.5, 13.2, 3, 1.2, r"$\mu^{(0)}$", "K × C", diagrams.BASES_COLOUR,
                      shape_at="right")
a_e = diagrams.operation(ax, 8.5, 7, 5.2, 2.2,
                         "A$_E$\n" r"$Z = \mathrm{softmax}_k(\lambda X \mu^\top)$")
Z_box = diagrams.tensor(ax, 13.2, 2, 1.2, 10, "$Z$", "N × K", diagrams.ATTENTION_COLOUR)
a_m = diagrams.operation(ax, 19.8, 7, 8.0, 3.0,
                         "A$_M$\n"
                         r"$\mu_k = \sum_n z_{nk} x_n \,/\, (\epsilon + \sum_n z_{nk})$" "\n"
                         r"$\mu_k \leftarrow \mu_k / \|\mu_k\|$  (back onto the sphere)")
mu_t = diagrams.tensor(ax, 18.3, 13.2, 3, 1.2, r"$\mu^{(t)}$", "K × C", diagrams.BASES_COLOUR,
                       shape_at="right")
a_r = diagrams.operation(ax, 27.6, 7, 3.8, 2.0, "A$_R$\n" r"$\tilde X = Z \mu^{(T)}$")
X_tilde = diagrams.tensor(ax, 32, 2, 3, 10, r"$\tilde X$", "N × C")
diagrams.arrow(ax, diagrams.right_of(X_box), diagrams.left_of(a_e, 0.1))
diagrams.arrow(ax, diagrams.bottom_of(mu0), diagrams.top_of(a_e, 0.1))
diagrams.arrow(ax, diagrams.right_of(a_e, 0.1), diagrams.left_of(Z_box))
diagrams.arrow(ax, diagrams.right_of(Z_box), diagrams.left_of(a_m, 0.1))
diagrams.arrow(ax, (3.5, 2.5), diagrams.bottom_of(a_m, 0.1), curve=0.25, text="$X$",
               text_offset=(0, -2.6))
diagrams.arrow(ax, diagrams.top_of(a_m, 0.1), diagrams.bottom_of(mu_t))
diagrams.arrow(ax, diagrams.left_of(mu_t), (10, 8.3), curve=0.25, colour="tab:red",
               text="repeat T times\n(under no-grad in EMANet)", text_offset=(-0.5, 2.3))
diagrams.arrow(ax, diagrams.right_of(mu_t, 1.6), diagrams.top_of(a_r, 0.1), curve=-0.3,
               text=r"$\mu^{(T)}$", text_offset=(1.0, 0.3))
diagrams.arrow(ax, (14.4, 3), diagrams.bottom_of(a_r, 0.1), curve=0.2, text="$Z$",
               text_offset=(0, -2.3))
diagrams.arrow(ax, diagrams.right_of(a_r, 0.1), diagrams.left_of(X_tilde))
plt.show()

# %% [markdown]
# Besides its output $\tilde X$, the size of its input, the only large thing EM attention
# creates is the $N \times K$ matrix $Z$; compare the $N \times N$ of the non-local block at
# the end of this notebook.
#
# ## The inverse temperature $\lambda$
#
# $\lambda = 1/\sigma^2$ (or $\kappa$ of the vMF) sets how sharply a pixel chooses among the
# bases. Small $\lambda$ (wide Gaussians) shares every pixel among all of them; large
# $\lambda$ gives each pixel to its nearest basis alone, the hard assignment of spherical
# k-means. Below, points on the unit circle and $K = 3$ bases; each point is coloured by its
# responsibilities $(z_{n1}, z_{n2}, z_{n3})$ read as red, green and blue, so pure colours
# mean hard assignments and grey means "undecided". The bases are run through $T = 3$
# iterations of EM attention.

# %%
angles = np.concatenate([rng.normal(a, 0.35, 150) for a in (0.3, 2.4, 4.3)])
circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (N, 2), unit length
bases_0 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # (K, 2)

lams = (0.5, 2.0, 8.0, 50.0)
fig, axes = plt.subplots(1, len(lams), figsize=(3.2 * len(lams), 3.4))
for ax, lam in zip(axes, lams):
    z, bases, _ = ema.em_attention(circle, bases_0, n_iter=3, lam=lam)
    ax.scatter(*circle.T, c=z, s=12)
    ax.scatter(*bases.T, c="k", marker="x", s=80)
    ax.set(title=f"$\\lambda$ = {lam}", aspect="equal", xlabel="$x_1$")
axes[0].set_ylabel("$x_2$")
fig.suptitle("responsibilities as colours (red, green, blue = bases 1, 2, 3); "
             "crosses = bases after T = 3", y=1.02)
plt.show()

# %% [markdown]
# The mean entropy of a row of $z$ summarises the picture: $\ln K$ for uniform
# responsibilities, 0 for one-hot ones.

# %%
def mean_entropy(z):
    return float(-np.mean(np.sum(z * np.log(np.clip(z, 1e-300, None)), axis=-1)))


lam_grid = np.geomspace(0.1, 300, 30)
entropies = [mean_entropy(ema.em_attention(circle, bases_0, n_iter=3, lam=lam)[0])
             for lam in lam_grid]
fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogx(lam_grid, entropies, label="after T = 3")
ax.axhline(np.log(3), color="grey", ls=":", label="$\\ln K$ (uniform)")
ax.set(xlabel="$\\lambda$", ylabel="mean entropy of $z_{n\\cdot}$ (nats)",
       title="how soft the assignments are")
ax.legend()
plt.show()

# %% [markdown]
# EMANet uses $\lambda = 1$ and lets the network choose the scale instead: its pixels are
# **not** normalised, only its bases are, so the logit $\lambda x_n^\top \mu_k$ has the scale
# of $\lambda \lVert x_n \rVert$. A backbone that makes its features longer makes the
# assignments harder; the length of a feature is a per-pixel temperature the network learns.
# (The constrained M-step above still holds for such pixels: it never used
# $\lVert x_n \rVert = 1$.)
#
# ## What the constraint changes, measured
#
# Drop the L2 step and the bases are plain weighted means: they take the scale of the
# features, and the logits $x_n^\top \mu_k$ then scale with its *square*. The E-step is also
# no longer the posterior of any spherical mixture, since the bases' lengths now differ and
# $-\lambda\lVert\mu_k\rVert^2/2$ is missing from the logits (longer bases take more pixels).
# Toy features with eight known clusters (mean length 1) are multiplied by a scale $s$, and
# $T = 3$ iterations run both ways from the same random bases. Three measurements:
#
# - **purity** of the grouping: give every point to its most responsible basis; in each
#   basis count the points of the cluster most common there; purity is that sum over $N$
#   (1 is a perfect grouping; splitting a cluster over bases is not penalised; the grey line
#   is the purity of the first, random assignment, from $\mu^{(0)}$);
# - **hardness**: the mean of $\max_k z_{nk}$ (1 is one-hot, $1/K$ uniform);
# - the mean **length** of the bases.
#
# Blue is always "with L2 (EMANet)", orange "without".

# %%
def iterate_without_l2(x, mu, n_iter=3):
    for _ in range(n_iter):
        z = ema.attention_e_step(x, mu)
        mu = ema.attention_m_step(x, z)  # no ema.l2_normalize here
    return z, mu


def purity(z, labels):
    """Purity of the hard grouping: every point goes to its most responsible basis; in each
    basis, count the points of the cluster most common there; sum over the bases, divide by N.
    1 is perfect; splitting a cluster over several bases is not penalised."""
    hard = z.argmax(axis=1)  # (N,)
    return sum(np.bincount(labels[hard == k]).max() for k in np.unique(hard)) / len(labels)


clusters = rng.standard_normal((K, C))  # (K, C) centres of the toy features
labels = rng.integers(0, K, N)  # (N,) the true cluster of every point
features = clusters[labels] + 0.7 * rng.standard_normal((N, C))  # (N, C)
features /= np.linalg.norm(features, axis=1).mean()  # mean length 1
bases_0 = ema.l2_normalize(rng.standard_normal((K, C)))

scales = np.geomspace(0.3, 30, 15)
runs = {"with L2 (EMANet)": [], "without": []}
for s in scales:
    z, mu_l2, _ = ema.em_attention(s * features, bases_0, n_iter=3)
    runs["with L2 (EMANet)"].append((purity(z, labels), z.max(axis=1).mean(), 1.0))
    z, mu_raw = iterate_without_l2(s * features, bases_0)
    runs["without"].append((purity(z, labels), z.max(axis=1).mean(),
                            np.linalg.norm(mu_raw, axis=1).mean()))
first_purity = purity(ema.attention_e_step(features, bases_0), labels)  # the same at every s

fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
for (name, values), colour in zip(runs.items(), ("tab:blue", "tab:orange")):
    for ax, column in zip(axes, np.array(values).T):
        ax.semilogx(scales, column, "o-", ms=3, color=colour, label=name)
axes[0].axhline(first_purity, color="grey", ls=":", label="first assignment")
axes[1].axhline(1 / K, color="grey", ls=":", label="uniform, $1/K$")
axes[2].set_yscale("log")
for ax, ylabel, title in zip(axes, ("purity after T = 3", r"mean $\max_k z_{nk}$",
                                    r"mean $\|\mu_k\|$"),
                             ("grouping", "hardness of the assignments", "length of the bases")):
    ax.set(xlabel="feature scale $s$", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for name, values in runs.items():
    print(f"{name:17s} purity at s = 0.3: {values[0][0]:.2f},  at s = 30: {values[-1][0]:.2f}")

# how far s must grow for the hardness to cross from a quarter to three quarters of the way
# from uniform (1/K) to one-hot (1); both curves rise, so np.interp may read s off them
swing_levels = 1 / K + (1 - 1 / K) * np.array([0.25, 0.75])
log_swing = {name: np.diff(np.interp(swing_levels, np.array(values)[:, 1], np.log(scales)))[0]
             for name, values in runs.items()}
for name, width in log_swing.items():
    print(f"{name:17s} hardness {swing_levels[0]:.2f} -> {swing_levels[1]:.2f} "
          f"while s grows {np.exp(width):.1f}x")
print(f"the swing without L2 spans {log_swing['without'] / log_swing['with L2 (EMANet)']:.2f} "
      f"of the range of log s it spans with L2")

# %% [markdown]
# What the measurements say, and what they do not:
#
# - The **temperature** is where the two differ. With the constraint the hardness grows
#   gradually with $s$ (logits $\propto s$); without it, it swings from nearly uniform to
#   one-hot over a little more than half the range of $\log s$ (the fraction printed),
#   close to the half that logits $\propto s^2$ predict, because the bases' length follows
#   $s$ (right panel).
# - The **grouping** itself is not ruined by dropping the step on these well-separated toy
#   clusters: at large $s$ both runs end far above the first, random assignment (the
#   constrained one somewhat higher), so nothing is "frozen in": a one-hot E-step is hard EM
#   (k-means), which still moves its assignments. At small $s$ both stay near the first
#   assignment: soft assignments shared by all bases pull every basis towards the same
#   global mean.
#
# The normalisation matters for two other reasons: it keeps the E-step a true posterior (the
# model the derivation is about), and it makes the bases of different images comparable,
# which is what lets EMANet keep a moving average of them (notebook 4).
#
# ## Reconstruction with $K$ bases
#
# A$_R$ re-expresses each pixel as a mixture of the bases, $\tilde x_n = \sum_k z_{nk} \mu_k$.
# To see it, take a photo (scikit-learn's sample image, downscaled eight times) and give each
# pixel its colour as the feature $x_n \in \mathbb{R}^3$, *whitened* (PCA to zero mean and
# unit variance per component). Raw colours vary mostly along the dark-to-bright axis, so
# their directions would all be nearly $\pm$ one vector and the bases would pair up on it;
# whitened colours point in every direction. The initial bases are $K$ random pixels.
#
# The **attention map** of basis $k$ is the column $z_{\cdot k}$ shown as an image: the
# picture the EMANet paper draws for its learnt features.

# %%
photo = load_sample_image("china.jpg")[::8, ::8] / 255.0  # (H, W, 3) in [0, 1]
H, W, _ = photo.shape
whitening = PCA(n_components=3, whiten=True).fit(photo.reshape(-1, 3))
colours = whitening.transform(photo.reshape(-1, 3))  # (N, 3), whitened colours
lengths = np.linalg.norm(colours, axis=1, keepdims=True)  # (N, 1)
print(f"{H} x {W} = {H * W} pixels, mean feature length {lengths.mean():.2f}")


def random_pixels(k, seed=0):
    """k distinct pixels, L2-normalised: the initial bases."""
    chosen = np.random.default_rng(seed).choice(len(colours), k, replace=False)
    return ema.l2_normalize(colours[chosen])


K_maps, lam_photo = 6, 5.0
z, bases, x_tilde = ema.em_attention(colours, random_pixels(K_maps), n_iter=3, lam=lam_photo)

fig, axes = plt.subplots(2, 4, figsize=(14, 5.4), layout="constrained")
axes = axes.ravel()
axes[0].imshow(photo)
axes[0].set_title("image")
for k in range(K_maps):
    shown = axes[k + 1].imshow(z[:, k].reshape(H, W), cmap="viridis", vmin=0, vmax=1)
    axes[k + 1].set_title(f"basis {k}: $z_{{\\cdot {k}}}$")
axes[-1].imshow(z.argmax(axis=1).reshape(H, W), cmap="tab10", vmin=0, vmax=9,
                interpolation="nearest")
axes[-1].set_title(r"most responsible basis")
for ax in axes:
    ax.axis("off")
fig.colorbar(shown, ax=axes.tolist(), shrink=0.6, label="responsibility $z_{nk}$")
plt.show()

# %% [markdown]
# What can $K$ bases represent? Three things limit $\tilde x_n$:
#
# - it lies in the span of the $K$ bases, so the matrix $\tilde X = Z\mu$ has rank at most $K$
#   whatever the number of channels $C$;
# - it is a convex combination of unit vectors, so $\lVert \tilde x_n \rVert \le 1$: the length
#   of $x_n$ is lost, only its direction is approximated (the EMAU's $1\times1$ convolution and
#   BatchNorm after A$_R$ restore a scale);
# - detail that no basis captures (a colour that is rare in the image) is replaced by the
#   nearest mixture of common ones, which is the *denoising* effect the paper describes.
#
# Below, A$_R$'s real output, unnormalised, beside its input. The top row is the input: the
# photo and its three whitened channels; the rows under it are $\tilde x = Z\mu$ for three
# values of $K$ ($T = 3$, $\lambda = 5$). All channel panels share one colour scale, wide
# enough for every value of the input. The colour images turn features back into RGB with
# one and the same affine map for $x$ and $\tilde x$: the whitening undone, nothing rescaled.
# Since $\lVert \tilde x_n \rVert \le 1$, every channel of $\tilde x_n$ stays within one
# standard deviation of the photo's mean colour: the reconstructions keep the hues and lose
# the contrast.

# %%
def as_colours(features):
    """Whitened colours (N, 3) back to an (H, W, 3) RGB image: one affine map for x and x~."""
    return whitening.inverse_transform(features).reshape(H, W, 3)


def reconstruct(k, n_iter=3, lam=lam_photo, seed=0):
    """z (N, k), the bases (k, 3) and A_R's output x~ = z mu (N, 3), from k random pixels."""
    return ema.em_attention(colours, random_pixels(k, seed), n_iter=n_iter, lam=lam)


np.testing.assert_allclose(as_colours(colours), photo, atol=1e-12)  # the map is exact on x
Ks_shown = (2, 6, 16)
rows = {"input $x$": colours} | {f"$\\tilde x$, K = {k}": reconstruct(k)[2] for k in Ks_shown}
scale = np.abs(colours).max()  # one colour scale for every channel panel
fig, axes = plt.subplots(len(rows), 4, figsize=(13, 2.35 * len(rows)), layout="constrained")
for row, (name, features) in zip(axes, rows.items()):
    shown = as_colours(features)
    assert shown.min() > -1e-9 and shown.max() < 1 + 1e-9  # inside RGB: clipped by rounding only
    row[0].imshow(np.clip(shown, 0, 1))
    row[0].set_ylabel(name, fontsize=11)
    for channel, ax in enumerate(row[1:]):
        values = ax.imshow(features[:, channel].reshape(H, W), cmap="RdBu_r",
                           vmin=-scale, vmax=scale)
    lengths_row = np.linalg.norm(features, axis=1)  # (N,)
    row[0].set_title(f"mean length {lengths_row.mean():.2f}, largest {lengths_row.max():.2f}",
                     fontsize=9)
for channel, ax in enumerate(axes[0, 1:]):
    ax.set_title(f"whitened channel {channel + 1}")
for ax in axes.ravel():
    ax.set(xticks=[], yticks=[])
fig.colorbar(values, ax=axes[:, 1:].ravel().tolist(), shrink=0.7, label="channel value")
fig.suptitle("A$_R$'s output beside its input: one colour scale, one map to RGB")
plt.show()

# %% [markdown]
# The channels of $\tilde x$ are pale on the shared scale: A$_R$ keeps directions, not
# lengths. How well is the direction kept? The mean cosine similarity between $x_n$ and
# $\tilde x_n$ answers that, and it depends on which pixels the bases start from; so every
# $K$ below is run from 10 different sets of random pixels, and the band shows the range
# over those starts.

# %%
def mean_cosine(x_tilde):
    """The mean over pixels of cos(x_n, x~_n)."""
    dots = np.sum(x_tilde * colours, axis=1)  # (N,)
    return float(np.mean(dots / (np.linalg.norm(x_tilde, axis=1) * lengths[:, 0])))


Ks = (2, 3, 4, 6, 8, 12, 16, 24, 32)
seeds = range(10)
x_tildes = [[reconstruct(k, seed=seed)[2] for seed in seeds] for k in Ks]
cosines = np.array([[mean_cosine(x_tilde) for x_tilde in runs] for runs in x_tildes])  # (K, S)
kept_length = np.array([[np.linalg.norm(x_tilde, axis=1).mean() for x_tilde in runs]
                        for runs in x_tildes])  # (K, S): mean |x~_n| of every run

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6))
for ax, values in ((left, cosines), (right, kept_length)):
    ax.fill_between(Ks, values.min(axis=1), values.max(axis=1), color="tab:blue", alpha=0.2,
                    label=f"range over {len(seeds)} starts")
    for seed_values in values.T:
        ax.plot(Ks, seed_values, ".", color="tab:blue", ms=3, alpha=0.5)
    ax.plot(Ks, values.mean(axis=1), "o-", color="tab:blue", label="mean over starts")
    ax.set(xscale="log", xlabel="K (number of bases)", xticks=Ks, xticklabels=Ks)
    ax.minorticks_off()
right.axhline(lengths.mean(), color="grey", ls="--", label=r"mean $\|x_n\|$ (input)")
right.axhline(1, color="grey", ls=":", label=r"$\|\tilde x_n\| \leq 1$")
right.set(ylim=(0, 1.1 * lengths.mean()), ylabel=r"mean $\|\tilde x_n\|$",
          title="length kept")
left.set(ylabel=r"mean $\cos(x_n, \tilde x_n)$", title="direction kept")
left.legend(loc="lower right")
right.legend(loc="lower right", fontsize=8)
plt.tight_layout()
plt.show()
print(" K   mean cos   range over starts   gain over the previous K")
for i, k in enumerate(Ks):
    gain = "" if i == 0 else f"{cosines[i].mean() - cosines[i - 1].mean():+.3f}"
    print(f"{k:2d}   {cosines[i].mean():.3f}      {cosines[i].min():.3f} - {cosines[i].max():.3f}"
          f"       {gain}")
falls = int(np.sum(np.any(np.diff(cosines, axis=0) < 0, axis=0)))
print(f"starts whose own curve falls somewhere between two K: {falls} of {len(seeds)}")

# %% [markdown]
# Averaged over starts, the direction kept rises with $K$, steeply at first and then more and
# more slowly: past a dozen bases each new one adds little (the gains printed above). The
# spread between starts is widest with few bases, where one badly placed basis is a large
# share of the whole, and it narrows as $K$ grows. A single start's own curve can fall from
# one $K$ to the next (the last line printed counts those that do), which is why one run per
# $K$ is not enough to read the curve. The length panel is the
# other half of the story: whatever $K$, $\lVert \tilde x_n \rVert$ stays below 1 while the
# input is longer on average; A$_R$ keeps the direction and drops the length.
#
# ### Explore: $\lambda$, $K$ and $T$
#
# The three knobs on the photo at once: the hard segmentation, how sure each pixel is
# ($\max_k z_{nk}$), and A$_R$'s output as colours (the map above). The figure below is drawn
# for $\lambda = 5$, $K = 6$, $T = 3$; in a live notebook the sliders under it redraw a copy
# with other values.

# %%
def distinct_bases(mu, tol=0.05):
    """The bases that are not within tol of an earlier basis: merged bases count once."""
    distances = np.linalg.norm(mu[:, None, :] - mu[None, :, :], axis=2)  # (K, K)
    return int(np.sum(~np.any(np.triu(distances < tol, k=1), axis=0)))


def explore_panels(axes, lam, K, T):
    """Segmentation, confidence (optional) and A_R's colours for one setting of the knobs."""
    z, mu, x_tilde = reconstruct(K, n_iter=T, lam=lam)
    palette = "tab10" if K <= 10 else "tab20"  # tab20 pairs two shades of one hue
    axes[0].imshow(z.argmax(axis=1).reshape(H, W), cmap=palette, vmin=0,
                   vmax=plt.get_cmap(palette).N - 1, interpolation="nearest")
    if len(axes) == 3:
        confident = axes[1].imshow(z.max(axis=1).reshape(H, W), cmap="magma", vmin=0, vmax=1)
        axes[1].figure.colorbar(confident, ax=axes[1], shrink=0.8)
    axes[-1].imshow(as_colours(x_tilde))
    for ax in axes:
        ax.set(xticks=[], yticks=[])
    return z, mu, x_tilde


def explore(lam=5.0, K=6, T=3):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    z, mu, x_tilde = explore_panels(axes, lam, K, T)
    axes[0].set_title(r"segmentation, $\arg\max_k z_{nk}$")
    axes[1].set_title(r"confidence, $\max_k z_{nk}$")
    axes[2].set_title(f"A$_R$ output (mean cos {mean_cosine(x_tilde):.3f})")
    fig.suptitle(f"$\\lambda$ = {lam:g}, K = {K}, T = {T}: {distinct_bases(mu)} distinct bases")
    plt.show()


explore()
sliders = {
    "lam": ipywidgets.FloatLogSlider(value=5.0, base=10, min=-1, max=2, description="λ"),
    "K": ipywidgets.IntSlider(value=6, min=2, max=16, description="K"),
    "T": ipywidgets.IntSlider(value=3, min=1, max=12, description="T"),
}
live = ipywidgets.Output()


def redraw(_change):
    with live:
        live.clear_output(wait=True)
        explore(**{name: slider.value for name, slider in sliders.items()})


for slider in sliders.values():
    slider.observe(redraw, names="value")
display(ipywidgets.HBox(list(sliders.values())), live)

# %% [markdown]
# On a rendered page, or anywhere without a running kernel, the sliders show nothing. The
# grid below is what they would draw, precomputed: one row per slider, three of its values,
# the other two knobs at $\lambda = 5$, $K = 6$, $T = 3$ (the $T$ row uses $K = 16$, where
# merging has room to show). Each setting is a pair: the segmentation, then A$_R$'s colours.

# %%
fallback = {
    r"$\lambda$": [{"lam": lam, "K": 6, "T": 3} for lam in (0.1, 5.0, 100.0)],
    "K": [{"lam": 5.0, "K": k, "T": 3} for k in (2, 6, 16)],
    "T": [{"lam": 5.0, "K": 16, "T": t} for t in (1, 3, 12)],
}
fig, axes = plt.subplots(3, 6, figsize=(15, 6.6), layout="constrained")
for row, (knob, settings) in zip(axes, fallback.items()):
    row[0].set_ylabel(f"slider {knob}", fontsize=12)
    for pair, setting in zip(row.reshape(3, 2), settings):
        z_grid, mu_grid, _ = explore_panels(pair, **setting)
        pair[0].set_title(f"$\\lambda$ = {setting['lam']:g}, K = {setting['K']}, "
                          f"T = {setting['T']}", fontsize=9, loc="left")
        pair[1].set_title(f"mean max z {z_grid.max(axis=1).mean():.2f}, "
                          f"{distinct_bases(mu_grid)} distinct", fontsize=9, loc="right")
fig.suptitle("the sliders, precomputed: segmentation and A$_R$ output for each setting")
plt.show()

# the lambda row: which basis wins, and how sure each pixel is of it
lam_row = {lam: reconstruct(6, lam=lam)[0] for lam in (0.1, 5.0, 100.0)}  # z, (N, K)
winner = {lam: z_lam.argmax(axis=1) for lam, z_lam in lam_row.items()}  # (N,)
sky = (slice(0, H // 4), slice(0, W // 6))  # the photo's top-left corner: sky only
for lam in (0.1, 100.0):
    moved = (winner[lam] != winner[5.0]).reshape(H, W)  # (H, W)
    print(f"lambda = {lam:g} gives {moved.mean():.0%} of the pixels another basis than "
          f"lambda = 5 does, {moved[sky].mean():.0%} of the sky at the top left")
print("mean max z: " + ", ".join(f"{z_lam.max(axis=1).mean():.2f} at lambda = {lam:g}"
                                 for lam, z_lam in lam_row.items()))

# %% [markdown]
# Row by row. $\lambda$ moves a good share of the pixels to another basis (printed under the
# grid, all runs from the same starting bases), sometimes whole regions, such as the sky at
# the top left. What it changes most is how sure each pixel is, the
# mean $\max_k z_{nk}$ printed last, and with it $\tilde x$. At $\lambda = 0.1$ every pixel is
# undecided (mean $\max_k z_{nk}$ near $1/K$), although its largest responsibility still draws
# segments, and $\tilde x_n$, an almost even mix of all the bases, shrinks to nearly the mean
# colour; at $\lambda = 100$ the assignments are one-hot, the segments are those of spherical
# k-means, and $\tilde x_n$ is the colour of one basis. More bases paint more colours. More
# iterations let bases drift together: bases closer than 0.05 count once in the titles, and
# that count falls as $T$ grows. Things to try with a live kernel: $K = 16$ with $T = 1$
# against $T = 12$ at $\lambda = 1$, and count the colours in the segmentation.
#
# The rank bound on features with many channels ($C = 64$, $K = 8$): the features themselves
# have full rank, their reconstruction at most rank $K$.

# %%
wide = rng.standard_normal((400, 64))
_, _, wide_tilde = ema.em_attention(wide, ema.l2_normalize(rng.standard_normal((8, 64))))
print("rank of X:", np.linalg.matrix_rank(wide),
      "  rank of X~ = Z mu:", np.linalg.matrix_rank(wide_tilde))

# %% [markdown]
# ## The non-local block: every pixel a basis
#
# The non-local block (9) lets every pixel attend to every other one,
#
# $$
# y_i = \frac{1}{\mathcal{C}(x_i)} \sum_{j=1}^{N} f(x_i, x_j)\, g(x_j),
# \qquad f(x_i, x_j) = \exp\big(\theta(x_i)^\top \phi(x_j)\big),
# \qquad \mathcal{C}(x_i) = \sum_j f(x_i, x_j).
# $$
#
# With identity embeddings $\theta$, $\phi$, $g$ the attention matrix $f / \mathcal{C}$ is
# $\mathrm{softmax}_j(x_i^\top x_j)$: exactly A$_E$ with $\lambda = 1$ and the bases set to
# all $N$ pixels, $\mu = X$, $K = N$. And $y = a\, X$ is A$_R$ with those *initial* bases.
# (EM attention's own output differs from there on: A$_M$ replaces each basis by a weighted
# mean of the pixels and normalises it.) Both identities, checked on a small crop of the
# photo:

# %%
crop = colours.reshape(H, W, 3)[:24, :32].reshape(-1, 3)  # (N, 3) with N = 768
attention = non_local.non_local_attention(crop)  # (N, N)
z_first, _, _ = ema.em_attention(crop, crop, n_iter=1)  # (N, N): one A_E from mu = X
print("non-local attention == A_E with mu = X:             ",
      np.max(np.abs(attention - z_first)))
print("non-local output    == A_R with the initial bases:  ",
      np.max(np.abs(non_local.non_local(crop) - ema.attention_reconstruct(z_first, crop))))

# %% [markdown]
# So the non-local block is EM attention with $K = N$ bases and no iterations: an
# $N \times N$ attention matrix, $O(N^2 C)$ work. EM attention keeps $K \ll N$ bases, found by
# EM, and pays $O(NKC)$ per iteration; the $N \times N$ matrix never exists. How much less,
# for the paper's $97 \times 97$ feature maps, $C = 512$ channels and $K = 64$?
#
# Count the floating-point operations of the products (the softmaxes and norms are $O(NK)$
# or $O(N^2)$ and add little). EM attention: per iteration A$_E$, $(N \times C)(C \times K)$,
# and A$_M$, $(K \times N)(N \times C)$, then A$_R$ once, each $2NKC$: $(4T + 2)\,NKC$. The
# non-local block, with its embeddings of $C'$ channels: $\theta\phi^\top$,
# $(N \times C')(C' \times N)$, and the attention times $g$, each $2N^2C'$: $4N^2C'$. The
# package writes both counts, `ema.em_attention_flops` and `non_local.non_local_flops`; they
# are checked below against PyTorch's `FlopCounterMode` run on the package's functions (the
# PyTorch stage of EM attention, and `non_local` on a tensor), then evaluated
# at the paper's size with $C' = C/2$, the usual non-local block (notebook 6 measures the
# blocks themselves). Storage is a different ratio: an $N \times N$ matrix against an
# $N \times K$ one.

# %%
import torch
from torch.utils.flop_counter import FlopCounterMode

from em_tutorial.ema import em_attention_flops  # (4T + 2) N K C
from em_tutorial.nn import functional as attention_torch
from em_tutorial.non_local import non_local_flops  # 4 N^2 C'


def counted_flops(function, *args, **kwargs):
    with FlopCounterMode(display=False) as counter:
        function(*args, **kwargs)
    return counter.get_total_flops()


crop_tensor = torch.from_numpy(crop)  # (N, 3), the crop above
bases_tensor = torch.from_numpy(random_pixels(8))  # (K, 3)
n_crop, c_crop = crop.shape
assert counted_flops(attention_torch.em_attention, crop_tensor, bases_tensor, n_iter=3) == \
    em_attention_flops(n_crop, 8, c_crop, 3)
assert counted_flops(non_local.non_local, crop_tensor) == non_local_flops(n_crop, c_crop)
print("FLOP counts == FlopCounterMode on the package's functions")

side, C_paper, K_paper, T_paper = 97, 512, 64, 3
n = side * side
flop_ratio = non_local_flops(n, C_paper // 2) / em_attention_flops(n, K_paper, C_paper, T_paper)
print(f"{side} x {side} map, C = {C_paper}, C' = {C_paper // 2}, K = {K_paper}, "
      f"T = {T_paper}:")
print(f"  FLOPs:   non-local {non_local_flops(n, C_paper // 2) / 1e9:.1f} G, EM attention "
      f"{em_attention_flops(n, K_paper, C_paper, T_paper) / 1e9:.2f} G: {flop_ratio:.0f}x less "
      "work in the attention")
print(f"  storage: N x N = {n * n * 4 / 2**20:.1f} MiB, N x K = {n * K_paper * 4 / 2**20:.2f} "
      f"MiB (float32): {n / K_paper:.0f}x less memory for the attention map")

# %% [markdown]
# The two factors differ because EM attention spends its saving on iterations: $T$ rounds of
# two products plus A$_R$, against two products on $C' = C/2$ channels for the non-local
# block. The work ratio grows like $N$ all the same, so the larger the feature map, the
# larger the saving.
#
# Those are the attention's products alone. A whole block also runs $1 \times 1$
# convolutions over all $N$ pixels, $O(NC^2)$: the non-local block its embeddings $\theta$,
# $\phi$, $g$ ($C \to C'$) and its output ($C' \to C$), the EMAU one convolution before EM
# attention and one after ($C \to C$). At $C' = C/2$ both sets come to $4NC^2$ FLOPs. Counted
# by `FlopCounterMode` on the whole PyTorch modules, `em_tutorial.nn.NonLocal2d` and
# `em_tutorial.nn.EMAU` (notebook 4), on one feature map of the paper's size:

# %%
from em_tutorial.nn import EMAU, NonLocal2d

paper_map = torch.randn(1, C_paper, side, side)  # (B, C, H, W)
whole_blocks = {
    "NonLocal2d": (NonLocal2d(C_paper).eval(), non_local_flops(n, C_paper // 2)),
    "EMAU": (EMAU(C_paper, num_bases=K_paper, num_stages=T_paper).eval(),
             em_attention_flops(n, K_paper, C_paper, T_paper)),
}
block_flops = {}
for name, (block, attention_flops) in whole_blocks.items():
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        block(paper_map)
    convolution_flops = counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
    assert convolution_flops == 4 * n * C_paper**2  # the 1x1 convolutions: 4 N C^2
    assert counter.get_total_flops() == attention_flops + convolution_flops  # nothing else
    block_flops[name] = counter.get_total_flops()
    print(f"{name:10s} {block_flops[name] / 1e9:6.1f} GFLOP: attention "
          f"{attention_flops / 1e9:5.1f} G + 1x1 convolutions {convolution_flops / 1e9:.1f} G")
print(f"whole blocks: {block_flops['NonLocal2d'] / block_flops['EMAU']:.1f}x less work for the "
      f"EMAU, against {flop_ratio:.0f}x in the attention alone")

# %% [markdown]
# The convolutions cost the same in both blocks, so they dilute the saving: the whole blocks
# differ by a much smaller factor than their attention does (the last line printed). That
# factor still grows with $N$, since only the attention is quadratic; notebook 6 measures
# the two blocks' time and memory over map sizes.

# %% [markdown]
# ## Exercises
#
# Each exercise leaves an answer set to `None`. Replace it and run the hidden cell after it
# (click the "..." to see its code): it says *not yet* while the answer is `None`, *right*
# when it is, and otherwise what is wrong, with a hint; an error raised inside your function
# is reported the same way and does not stop the notebook.
#
# **Exercise 1: bases of different lengths.** Without the unit-length constraint the
# spherical mixture's E-step keeps the term $-\lambda\lVert\mu_k\rVert^2/2$. Write that E-step
# (a softmax over $k$) for bases of any length.

# %% tags=["exercise"]
def e_step_any_length(x, mu, lam):
    """z_nk of the spherical mixture with means mu (K, C) of any length; x (N, C)."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
from exercises import check

_mu_long = rng.standard_normal((K, C)) * rng.uniform(0.5, 2.0, (K, 1))  # lengths differ
check("Exercise 1", lambda: e_step_any_length(x, _mu_long, 2.0),
      gmm.e_step(x, **ema.spherical_gmm_parameters(_mu_long, 2.0)),
      "start from the log-density at the top of the notebook and keep every term that "
      "depends on k; with lambda = 1/sigma^2, which one did unit-length bases let us drop?")

# %% [markdown]
# **Exercise 2: spherical k-means as the limit.** As $\lambda \to \infty$ the E-step becomes a
# hard assignment. Write it: $z_{nk} = 1$ for the basis with the largest $x_n^\top\mu_k$, 0
# for the others.

# %% tags=["exercise"]
def hard_e_step(x, mu):
    """One-hot z (N, K): each pixel to the basis of largest dot product."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
check("Exercise 2", lambda: hard_e_step(x, mu), ema.attention_e_step(x, mu, lam=1e6),
      atol=1e-9,
      hint="find each pixel's winning basis with an argmax over the right axis of the "
           "(N, K) dot products, then turn those indices into one-hot rows.")

# %% [markdown]
# **Exercise 3: the transformer's temperature.** Scaled dot-product attention divides the
# logits by $\sqrt{C}$. The reason is the logits' scale: for features whose channels have
# unit variance, the standard deviation of $x_i^\top x_j$ grows like $\sqrt{C}$ (measured
# below on random pairs), and a softmax of ever larger logits tends to a one-hot, the large-
# $\lambda$ end of this notebook.

# %%
for channels in (4, 16, 64, 256, 1024):
    pairs = rng.standard_normal((2, 10_000, channels))  # 10 000 pairs (x_i, x_j)
    dots = np.sum(pairs[0] * pairs[1], axis=1)  # (10 000,) x_i^T x_j
    print(f"C = {channels:4d}: std of x_i^T x_j {dots.std():5.2f}, "
          f"sqrt(C) {np.sqrt(channels):5.2f}")

# %% [markdown]
# Which $\lambda$ makes the non-local attention above (A$_E$ with $\mu = X$) equal to
# $\mathrm{softmax}_j(x_i^\top x_j / \sqrt{C})$ on the crop, whose $C$ is `crop.shape[1]`?

# %% tags=["exercise"]
lam_scaled = None  # your answer here: a number

# %% tags=["check"] jupyter={"source_hidden": true}
# softmax_j(lam x_i^T x_j) equals softmax_j(x_i^T x_j / sqrt(C)) when lam = 1 / sqrt(C)
_lam_expected = 1 / np.sqrt(crop.shape[1])
np.testing.assert_allclose(ema.attention_e_step(crop, crop, lam=_lam_expected),
                           softmax(crop @ crop.T / np.sqrt(crop.shape[1]), axis=1), rtol=1e-10)
check("Exercise 3", lam_scaled, _lam_expected,
      "write out the softmax argument of both and match them term by term; C is a "
      "number here, not a symbol.", rtol=1e-3)
