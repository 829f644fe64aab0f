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
# # 2. From the Gaussian mixture to EM attention
#
# Notebook 1 fitted full Gaussian mixtures. EMANet runs something much leaner on every
# feature map: three EM iterations with a fixed kernel, no covariances, no mixing weights.
# This notebook derives that special case from the mixture, looks at its two knobs (the
# inverse temperature $\lambda$ and the L2 normalisation of the bases), at what the
# reconstruction with $K$ bases keeps and loses, and at the non-local block as the case
# where every pixel is a basis.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_sample_image
from sklearn.decomposition import PCA

from em_tutorial import ema, gmm, non_local

rng = np.random.default_rng(0)

# %% [markdown]
# ## The derivation
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
# denominator of (5). What is left is a softmax over the bases of a dot product:
#
# $$
# z_{nk} = \frac{\exp(\lambda\, x_n^\top \mu_k)}{\sum_{j=1}^{K} \exp(\lambda\, x_n^\top \mu_j)},
# \qquad \lambda = \frac{1}{\sigma^2}.
# $$
#
# That is EM attention's E-step, A$_E$. In the package it is one matrix product and one
# softmax:

# %%
print(inspect.getsource(ema.attention_e_step))

# %% [markdown]
# The claim is checkable: `ema.spherical_gmm_parameters` writes down the mixture (means
# $\mu$, precision $1/\sigma = \sqrt{\lambda}$ for every component, uniform weights), and the
# general E-step of `em_tutorial.gmm` on that mixture gives the same responsibilities as
# A$_E$. Unit-length pixels are more than it needs: $\lVert x_n \rVert^2$ is the same for every
# $k$ and cancels whatever it is; the bases must share one length, or
# $-\lambda \lVert \mu_k \rVert^2 / 2$ stays in the logits.

# %%
N, C, K, lam = 500, 16, 8, 4.0
x = rng.standard_normal((N, C))
x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit-length pixels
mu = rng.standard_normal((K, C))
mu /= np.linalg.norm(mu, axis=1, keepdims=True)  # unit-length bases

z_attention = ema.attention_e_step(x, mu, lam)
z_mixture = gmm.e_step(x, **ema.spherical_gmm_parameters(mu, lam))
print("largest difference, mixture E-step vs A_E:", np.max(np.abs(z_mixture - z_attention)))

# %% [markdown]
# The M-step (7) keeps only its mean update, followed by a step the mixture does not have,
# the L2 normalisation that puts each basis back on the unit sphere:
#
# $$
# \text{A}_M:\quad \mu_k = \frac{\sum_n z_{nk}\, x_n}{\epsilon + \sum_n z_{nk}},
# \qquad \mu_k \leftarrow \frac{\mu_k}{\epsilon + \lVert \mu_k \rVert},
# \qquad \epsilon = 10^{-6}.
# $$
#
# After $T$ iterations the reconstruction (8) re-expresses every pixel with the bases,
# A$_R$: $\tilde x_n = \sum_k z_{nk}\, \mu_k$. The whole of EM attention:

# %%
print(inspect.getsource(ema.em_iterations))
print(inspect.getsource(ema.attention_m_step))

# %% [markdown]
# ## The inverse temperature $\lambda$
#
# $\lambda = 1/\sigma^2$ sets how sharply a pixel chooses among the bases. Small $\lambda$
# (wide Gaussians) shares every pixel among all of them; large $\lambda$ gives each pixel to
# its nearest basis alone, the hard assignment of k-means. Below, points on the unit circle
# and $K = 3$ bases; each point is coloured by its responsibilities $(z_{n1}, z_{n2}, z_{n3})$
# read as red, green and blue, so pure colours mean hard assignments and grey means
# "undecided". The bases are run through $T = 3$ iterations of EM attention.

# %%
angles = np.concatenate([rng.normal(a, 0.35, 150) for a in (0.3, 2.4, 4.3)])
circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (N, 2), unit length
bases_0 = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # (K, 2)

lams = (0.5, 2.0, 8.0, 50.0)
fig, axes = plt.subplots(1, len(lams), figsize=(3.2 * len(lams), 3.3))
for ax, lam in zip(axes, lams):
    z, bases, _ = ema.em_attention(circle, bases_0, n_iter=3, lam=lam)
    ax.scatter(*circle.T, c=z, s=12)
    ax.scatter(*bases.T, c="k", marker="x", s=80)
    ax.set_title(f"$\\lambda$ = {lam}")
    ax.set_aspect("equal")
    ax.axis("off")
fig.suptitle("responsibilities as colours; crosses = bases after T = 3", y=1.02)
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
plt.figure(figsize=(5, 3))
plt.semilogx(lam_grid, entropies)
plt.axhline(np.log(3), color="grey", ls=":", label="$\\ln K$ (uniform)")
plt.xlabel("$\\lambda$")
plt.ylabel("mean entropy of $z_{n\\cdot}$")
plt.legend()
plt.show()

# %% [markdown]
# EMANet uses $\lambda = 1$ and lets the network choose the scale instead: its pixels are
# **not** normalised, only its bases are, so the logit $\lambda x_n^\top \mu_k$ has the scale
# of $\lambda \lVert x_n \rVert$. A backbone that makes its features longer makes the
# assignments harder; the length of a feature is a per-pixel temperature the network learns.
#
# ## What the L2 normalisation prevents
#
# Without it the bases take the scale of the features, and the logits $x_n^\top \mu_k$ scale
# with its *square*. Multiply toy features (eight clusters, mean length 1) by $s$ and run
# $T = 3$ iterations both ways. With normalised bases the logits grow like $s$ and the
# assignments sharpen gradually. Without, short features make short bases (the mean of
# softly shared pixels), every pixel stays shared by all bases and the grouping is lost;
# long features make long bases and the softmax snaps to one-hot at the first step, so the
# first, random assignment is frozen in. The un-normalised variant below is the package's own
# A$_E$ and A$_M$ steps, with the `l2_normalize` step left out.

# %%
print(inspect.getsource(ema.l2_normalize))


# %%
def iterate_without_l2(x, mu, n_iter=3):
    for _ in range(n_iter):
        z = ema.attention_e_step(x, mu)
        mu = ema.attention_m_step(x, z)  # no ema.l2_normalize here
    return z, mu


clusters = rng.standard_normal((K, C))  # (K, C) centres of the toy features
features = clusters[rng.integers(0, K, N)] + 0.7 * rng.standard_normal((N, C))  # (N, C)
features /= np.linalg.norm(features, axis=1).mean()  # mean length 1
bases_0 = ema.l2_normalize(rng.standard_normal((K, C)))

scales = np.geomspace(0.3, 30, 15)
with_l2, without_l2, base_norms = [], [], []
for s in scales:
    z, _, _ = ema.em_attention(s * features, bases_0, n_iter=3)
    with_l2.append(mean_entropy(z))
    z, mu_raw = iterate_without_l2(s * features, bases_0)
    without_l2.append(mean_entropy(z))
    base_norms.append(np.linalg.norm(mu_raw, axis=1).mean())

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
left.semilogx(scales, with_l2, label="with L2 normalisation (EMANet)")
left.semilogx(scales, without_l2, label="without")
left.axhline(np.log(K), color="grey", ls=":", label="$\\ln K$")
left.set(xlabel="feature scale $s$", ylabel="mean entropy of $z$",
         title="how soft the assignments stay")
left.legend()
right.loglog(scales, base_norms, label="without: $\\|\\mu_k\\|$ follows $s$")
right.loglog(scales, np.ones_like(scales), label="with: $\\|\\mu_k\\| = 1$")
right.set(xlabel="feature scale $s$", ylabel="mean $\\|\\mu_k\\|$", title="length of the bases")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The normalisation also makes the bases comparable across images and batches, which is what
# lets EMANet keep a moving average of them (notebook 4).
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
print(f"{H} x {W} = {H * W} pixels, "
      f"mean feature length {np.linalg.norm(colours, axis=1).mean():.2f}")


def random_pixels(k):
    """k distinct pixels, L2-normalised: the initial bases."""
    return ema.l2_normalize(colours[rng.choice(len(colours), k, replace=False)])


K_maps, lam_photo = 6, 5.0
z, bases, x_tilde = ema.em_attention(colours, random_pixels(K_maps), n_iter=3, lam=lam_photo)

fig, axes = plt.subplots(1, K_maps + 1, figsize=(2.2 * (K_maps + 1), 2))
axes[0].imshow(photo)
axes[0].set_title("image")
for k in range(K_maps):
    axes[k + 1].imshow(z[:, k].reshape(H, W), cmap="viridis", vmin=0, vmax=1)
    axes[k + 1].set_title(f"basis {k}")
for ax in axes:
    ax.axis("off")
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
# The reconstructions below are turned back into colours by giving each $\tilde x_n$ the
# length of $x_n$ and undoing the whitening, for display only. The curve measures how well the
# direction is kept: the mean cosine similarity between $x_n$ and $\tilde x_n$. EM has
# nothing that pushes bases apart, so once $K$ exceeds the number of distinct directions in
# the data some bases merge, and each extra basis pays less.

# %%
Ks = (2, 3, 4, 6, 8, 16)
lengths = np.linalg.norm(colours, axis=1, keepdims=True)  # (N, 1)
fig, axes = plt.subplots(1, len(Ks) + 1, figsize=(2.2 * (len(Ks) + 1), 2))
axes[0].imshow(photo)
axes[0].set_title("image")
cosines = []
for ax, k in zip(axes[1:], Ks):
    _, _, x_tilde = ema.em_attention(colours, random_pixels(k), n_iter=3, lam=lam_photo)
    directions = x_tilde / np.linalg.norm(x_tilde, axis=1, keepdims=True)  # (N, 3)
    cosines.append(float(np.mean(np.sum(directions * colours / lengths, axis=1))))
    shown = whitening.inverse_transform(directions * lengths)  # display only
    ax.imshow(np.clip(shown.reshape(H, W, 3), 0, 1))
    ax.set_title(f"K = {k}")
for ax in axes:
    ax.axis("off")
plt.show()

plt.figure(figsize=(4.5, 3))
plt.plot(Ks, cosines, "o-")
plt.xlabel("K")
plt.ylabel("mean cos$(x_n, \\tilde x_n)$")
plt.show()

# %% [markdown]
# The rank bound on features with many channels ($C = 64$, $K = 8$): the features themselves
# have full rank 64, their reconstruction rank 8.

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
# EM, and pays $O(NKC)$ per iteration; the $N \times N$ matrix never exists. For the paper's
# $97 \times 97$ feature maps and $K = 64$ that is $N / K \approx 147$ times less attention to
# compute and store. Notebook 6 measures it.

# %%
for side in (33, 65, 97):
    n = side * side
    print(f"{side}x{side}: N x N = {n * n * 4 / 2**20:7.1f} MiB,  "
          f"N x K (K=64) = {n * 64 * 4 / 2**20:5.2f} MiB  (float32)")
