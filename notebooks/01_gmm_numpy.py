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
# # 1. EM and the Gaussian mixture in NumPy
#
# EMANet's attention module is a few iterations of the Expectation-Maximization algorithm.
# Before the special case, the general one: EM for a mixture of Gaussians, written in
# `em_tutorial.gmm` one function per equation. This notebook puts each equation beside the
# function that computes it, runs EM on points in the plane and watches it converge, compares
# the seed's covariance update with the textbook one, checks the package against
# scikit-learn, and finally segments a photograph by clustering its pixel colours.
#
# "The seed" is the short study note on the EMANet paper that this tutorial grew from; the
# equation numbers (1)-(9) used throughout the package are its numbers.

# %%
import inspect
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import sklearn.mixture
from matplotlib.patches import Ellipse
from scipy.stats import multivariate_normal
from sklearn.datasets import load_sample_image
from sklearn.exceptions import ConvergenceWarning

from em_tutorial import gmm

rng = np.random.default_rng(0)

# %% [markdown]
# ## EM in two lines
#
# Data $X = \{x_1, \dots, x_N\}$ is explained by latent variables $Z$ (here: which component
# produced each point) and parameters $\theta$. Maximising $\ln p(X \mid \theta)$ directly is
# hard because of the sum over $Z$ inside the logarithm; EM alternates two easy steps instead:
#
# $$
# \text{E-step (1):}\quad Q(\theta, \theta^{\text{old}}) = \sum_{Z} p(Z \mid X, \theta^{\text{old}})\, \ln p(X, Z \mid \theta),
# \qquad
# \text{M-step (2):}\quad \theta^{\text{new}} = \arg\max_{\theta}\, Q(\theta, \theta^{\text{old}}).
# $$
#
# Each round can only raise the likelihood $\ln p(X \mid \theta)$ (or leave it unchanged):
# $Q$ plus an entropy term is a lower bound that touches the likelihood at $\theta^{\text{old}}$.
#
# ## The mixture, equation by equation
#
# A Gaussian mixture with $K$ components, mixing weights $\pi_k$, means $\mu_k$ and
# covariances $\Sigma_k$ models each point as
#
# $$
# p(x_n) = \sum_{k=1}^{K} \pi_k\, \mathcal{N}(x_n \mid \mu_k, \Sigma_k). \tag{3}
# $$
#
# (The seed note writes $z_{nk}$ for the weights and leaves $\pi_k$ out, i.e. $\pi_k = 1/K$;
# the package does both: `weights=None` is the uniform prior.) Everything is computed in log
# space, through the Cholesky factor $P_k$ of the precision, $\Sigma_k^{-1} = P_k P_k^\top$:
#
# $$
# \ln \mathcal{N}(x_n \mid \mu_k, \Sigma_k)
# = -\tfrac{d}{2} \ln 2\pi - \tfrac12 \big\lVert (x_n - \mu_k) P_k \big\rVert^2 + \ln\lvert P_k \rvert .
# $$
#
# The plain version walks the components one at a time (the estimator uses a blocked twin
# that computes the same numbers faster):

# %%
print(inspect.getsource(gmm.log_gaussian_density))

# %% [markdown]
# A toy data set: three elongated clusters in the plane. The density of one component checks
# out against SciPy:

# %%
def three_clusters(rng, sizes=(250, 200, 150)):
    shapes = [np.array([[1.5, 0.8], [0.0, 0.4]]),  # each cluster: A^T A is its covariance
              np.array([[0.5, 0.0], [0.3, 1.2]]),
              np.array([[0.7, -0.5], [0.0, 0.6]])]
    centres = [(-2.5, 0.0), (2.0, 2.0), (1.5, -2.5)]
    return np.concatenate([rng.standard_normal((n, 2)) @ a + c
                           for a, c, n in zip(shapes, centres, sizes)])


X = three_clusters(rng)
K = 3

start = np.random.default_rng(2)
means = X[start.choice(len(X), K, replace=False)]  # initial means: three random points
covariances = np.stack([np.eye(2)] * K)  # initial covariances: identity
weights = np.full(K, 1 / K)
precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")

log_density = gmm.log_gaussian_density(X, means, precisions_cholesky, "full")  # (N, K)
reference = multivariate_normal(means[0], covariances[0]).logpdf(X)
print("largest difference to scipy.stats:", np.max(np.abs(log_density[:, 0] - reference)))

# %% [markdown]
# The log-likelihood (4) sums the log of (3) over the points; the log of a sum of exponentials
# is taken with the log-sum-exp trick, so that far-away points do not underflow to $\ln 0$:
#
# $$
# \ln p(X \mid \pi, \mu, \Sigma) = \sum_{n=1}^{N} \ln \sum_{k=1}^{K} \pi_k\, \mathcal{N}(x_n \mid \mu_k, \Sigma_k). \tag{4}
# $$
#
# The E-step (5) is Bayes' rule for "which component produced $x_n$": a softmax over $k$ of
# the weighted log-densities,
#
# $$
# z_{nk} = \frac{\pi_k\, \mathcal{N}(x_n \mid \mu_k, \Sigma_k)}{\sum_{j} \pi_j\, \mathcal{N}(x_n \mid \mu_j, \Sigma_j)}. \tag{5}
# $$

# %%
print(inspect.getsource(gmm._e_step.log_responsibilities_from_log_density))
print(inspect.getsource(gmm.log_likelihood))

# %% [markdown]
# The M-step (7) re-estimates every parameter from the soft counts $N_k = \sum_n z_{nk}$:
#
# $$
# \pi_k = \frac{N_k}{N}, \qquad
# \mu_k = \frac{1}{N_k} \sum_n z_{nk}\, x_n, \qquad
# \Sigma_k = \frac{1}{N_k} \sum_n z_{nk}\, (x_n - \mu_k)(x_n - \mu_k)^\top + \varepsilon I. \tag{7}
# $$
#
# The small $\varepsilon$ (`reg_covar`) keeps a component that sits on a single point from
# collapsing to a singular covariance.

# %%
print(inspect.getsource(gmm._m_step.counts_weights_means))
print(inspect.getsource(gmm.m_step))

# %% [markdown]
# And the reconstruction (8) re-expresses each point by the component means, weighted by its
# responsibilities: $\tilde x_n = \sum_k z_{nk}\, \mu_k$. It plays no role in fitting the
# mixture, but it is the output of EM attention in EMANet (notebook 2).

# %%
print(inspect.getsource(gmm.reconstruct))

# %% [markdown]
# ## EM on points in the plane
#
# The loop is just the package's functions in turn: E-step, M-step, and the log-likelihood
# to watch.

# %%
def run_em(X, means, covariances, weights, n_iter, covariance_means="new"):
    """EM from the given start; covariance_means="old" uses the seed's form of eq. (7)."""
    precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")
    history = [(weights, means, covariances)]
    log_likelihoods = [float(gmm.log_likelihood(X, means, precisions_cholesky, "full", weights))]
    for _ in range(n_iter):
        resp = gmm.e_step(X, means, precisions_cholesky, "full", weights)  # (N, K), eq. 5
        centres = None if covariance_means == "new" else means
        weights, means, covariances = gmm.m_step(X, resp, "full", covariance_means=centres)  # eq. 7
        precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")
        history.append((weights, means, covariances))
        log_likelihoods.append(
            float(gmm.log_likelihood(X, means, precisions_cholesky, "full", weights))  # eq. 4
        )
    return history, np.array(log_likelihoods), resp


history, log_likelihoods, resp = run_em(X, means, covariances, weights, n_iter=40)

# %% [markdown]
# Each ellipse is a component's covariance at one and two standard deviations; the points are
# coloured by their responsibilities (three components, read as red, green, blue).

# %%
def draw_components(ax, means, covariances, colours=("red", "limegreen", "blue"), linestyle="-"):
    for mean, cov, colour in zip(means, covariances, colours):
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(eigenvectors[1, 1], eigenvectors[0, 1]))
        for radius in (1, 2):
            width, height = 2 * radius * np.sqrt(eigenvalues[::-1])
            ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color=colour,
                                 lw=1.5, ls=linestyle))
        ax.plot(*mean, "x", color=colour, ms=8, mew=2)


shown = (0, 1, 2, 4, 8, 40)
fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.2), sharex=True, sharey=True)
for ax, t in zip(axes, shown):
    if t == 0:
        ax.scatter(*X.T, s=4, c="grey")
    else:
        previous_weights, previous_means, previous_covariances = history[t - 1]
        precisions_cholesky = gmm.precisions_cholesky_from_covariances(previous_covariances, "full")
        z = gmm.e_step(X, previous_means, precisions_cholesky, "full", previous_weights)
        ax.scatter(*X.T, s=4, c=z)  # the responsibilities that produced iteration t
    draw_components(ax, *history[t][1:])
    ax.set_title(f"iteration {t}")
    ax.set_aspect("equal")
plt.tight_layout()
plt.show()

# %%
plt.figure(figsize=(5, 3))
plt.plot(log_likelihoods, ".-")
plt.xlabel("iteration")
plt.ylabel("log-likelihood (4)")
plt.title("EM never decreases the likelihood")
plt.show()
def never_decreases(curve):
    """True if no step lowers the log-likelihood by more than float64 rounding."""
    return bool(np.all(np.diff(curve) >= -1e-12 * np.abs(curve).max()))


print("log-likelihood never decreases:", never_decreases(log_likelihoods))

# %% [markdown]
# ## The seed's covariance: old mean or new mean?
#
# The seed note writes the covariance update with the *old* mean,
# $\Sigma_k = \frac{1}{N_k}\sum_n z_{nk}(x_n - \mu_k^{\text{old}})(x_n - \mu_k^{\text{old}})^\top$;
# textbook EM (Bishop, PRML eq. 9.25) uses the new one. Expanding around the new mean shows
# the difference:
#
# $$
# \frac{1}{N_k}\sum_n z_{nk}(x_n - \mu^{\text{old}}_k)(x_n - \mu^{\text{old}}_k)^\top
# = \Sigma_k^{\text{textbook}} + \Delta_k \Delta_k^\top,
# \qquad \Delta_k = \mu_k^{\text{new}} - \mu_k^{\text{old}},
# $$
#
# so the seed's form inflates each covariance along the direction its mean just moved, and
# only the textbook form maximises $Q$ in the M-step (2). `gmm.m_step` computes the seed's
# form when given the old means as `covariance_means`.
#
# Here is that inflation after the first E-step of the run above: the same responsibilities,
# the two forms of the covariance, and the identity checked numerically.

# %%
precisions_cholesky_0 = gmm.precisions_cholesky_from_covariances(covariances, "full")
resp_0 = gmm.e_step(X, means, precisions_cholesky_0, "full", weights)
_, new_means, textbook = gmm.m_step(X, resp_0, "full")
_, _, seed_form = gmm.m_step(X, resp_0, "full", covariance_means=means)  # old means inside

delta = new_means - means  # (K, 2): how far each mean moved
outer = delta[:, :, None] * delta[:, None, :]  # (K, 2, 2): Delta_k Delta_k^T
print("seed - textbook == Delta Delta^T, largest difference:",
      np.max(np.abs(seed_form - textbook - outer)))

fig, ax = plt.subplots(figsize=(5, 4))
ax.scatter(*X.T, s=3, c="lightgrey")
draw_components(ax, new_means, textbook)
draw_components(ax, new_means, seed_form, linestyle="--")
for old, new in zip(means, new_means):
    ax.annotate("", new, old, arrowprops={"arrowstyle": "->", "color": "k"})
ax.set_title("first M-step: textbook (solid) vs seed (dashed)")
ax.set_aspect("equal")
plt.show()

# %% [markdown]
# Does the seed's form break EM's promise that the likelihood never falls? It does not: it is
# a *conditional-maximisation* step (ECM, Meng and Rubin 1993), a kind of generalised EM that
# raises $Q$ without maximising it. Scored on the current
# responsibilities, the old parameters see exactly the scatter
# $\Sigma^{\text{textbook}}_k + \Delta_k\Delta_k^\top$ around their means, and no covariance fits
# a scatter better than that scatter itself; the seed's covariance *is* that scatter, and
# moving the mean to its new place only shrinks the scatter it has to explain. So the seed's
# step gives a $Q$ at least as high as the old parameters', and that is all the monotonicity
# argument needs. What it gives up is
# the largest step: each step gains at most as much $Q$ as the textbook one. At a fixed
# point, where $\Delta_k = 0$, the two forms coincide. On this data the seed's run, from the
# same start, trails the textbook one by about an iteration; the inflation matters most while
# the means travel far compared with the size of their clusters.

# %%
_, log_likelihoods_seed, _ = run_em(X, means, covariances, weights, n_iter=40,
                                    covariance_means="old")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
left.plot(log_likelihoods, ".-", label="new mean (textbook)")
left.plot(log_likelihoods_seed, ".-", label="old mean (seed)")
left.set(xlabel="iteration", ylabel="log-likelihood", ylim=(log_likelihoods[1], None))
left.legend()
right.semilogy(np.maximum(log_likelihoods[-1] - log_likelihoods, 1e-12), label="new mean")
right.semilogy(np.maximum(log_likelihoods[-1] - log_likelihoods_seed, 1e-12), label="old mean")
right.set(xlabel="iteration", ylabel="distance to the final likelihood", title="convergence")
right.legend()
plt.tight_layout()
plt.show()
for name, curve in (("new mean", log_likelihoods), ("old mean", log_likelihoods_seed)):
    steps = int(np.argmax(curve[-1] - curve < 1e-3))
    print(f"{name}: never decreases {never_decreases(curve)}, within 1e-3 of the end after "
          f"{steps} iterations, final log-likelihood {curve[-1]:.4f}")

# %% [markdown]
# ## Agreement with scikit-learn
#
# `gmm.GaussianMixture` is a drop-in for `sklearn.mixture.GaussianMixture`: same constructor,
# same fitted attributes, same methods, plus `reconstruct`. Give both the same starting
# parameters and let them take one EM iteration per `fit` call (`max_iter=1`,
# `warm_start=True`): they agree at every iteration to float64 rounding.

# %%
def one_iteration_per_fit(cls):
    return cls(n_components=K, covariance_type="full", max_iter=1, warm_start=True,
               weights_init=weights, means_init=means,
               precisions_init=np.linalg.inv(covariances))


ours = one_iteration_per_fit(gmm.GaussianMixture)
theirs = one_iteration_per_fit(sklearn.mixture.GaussianMixture)
differences = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # one iteration never "converges"
    for _ in range(25):
        ours.fit(X)
        theirs.fit(X)
        differences.append(max(np.max(np.abs(ours.means_ - theirs.means_)),
                               np.max(np.abs(ours.covariances_ - theirs.covariances_)),
                               np.max(np.abs(ours.weights_ - theirs.weights_))))
print("largest parameter difference over 25 iterations:", max(differences))
print("lower bound, ours vs scikit-learn:", ours.lower_bound_, theirs.lower_bound_)

# %% [markdown]
# ## Unsupervised segmentation of a photograph
#
# A pixel's colour is a point in $\mathbb{R}^3$; a mixture fitted to all the pixels of an image
# groups them into $K$ colour clusters, and the responsibilities assign every pixel to one:
# a segmentation with no labels at all. The image ships with scikit-learn; it is downscaled
# four times to keep the fit quick.

# %%
photo = load_sample_image("china.jpg")[::4, ::4]  # (H, W, 3) uint8
H, W, _ = photo.shape
pixels = photo.reshape(-1, 3) / 255.0  # (N, 3) colours in [0, 1]

start = time.perf_counter()
mixture = gmm.GaussianMixture(n_components=6, covariance_type="full", random_state=0).fit(pixels)
print(f"{H} x {W} = {H * W} pixels, fitted in {time.perf_counter() - start:.2f} s, "
      f"{mixture.n_iter_} iterations, converged: {mixture.converged_}")

labels = mixture.predict(pixels)  # (N,) the most responsible component
reconstruction = mixture.reconstruct(pixels)  # (N, 3) eq. 8: sum_k z_nk mu_k

fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
axes[0].imshow(photo)
axes[0].set_title("image")
axes[1].imshow(labels.reshape(H, W), cmap="tab10", interpolation="nearest")
axes[1].set_title("most responsible component")
axes[2].imshow(np.clip(reconstruction.reshape(H, W, 3), 0, 1))
axes[2].set_title(r"reconstruction $\tilde x_n = \sum_k z_{nk}\mu_k$ (8)")
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The mixture found sky, water, foliage and the building's tones without being told what an
# object is: colour alone separates them. The reconstruction (8) paints each pixel with the
# mean colours of its components: six colours reproduce the picture's structure, the
# "compact representation" that EMANet builds from its bases. What colour cannot do, such as
# telling two objects of the same colour apart, is left to the learnt features of notebook 5.
#
# Next, notebook 2 shrinks this mixture to the special case EMANet runs on its feature maps.
