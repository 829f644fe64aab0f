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
# # 1. EM and the Gaussian mixture in NumPy
#
# EMANet's attention module is a few iterations of the Expectation-Maximization algorithm.
# Before the special case, the general one: EM for a mixture of Gaussians, written in
# `em_tutorial.gmm` one function per equation. This notebook derives the mixture's E- and
# M-steps from the two lines of EM, draws why EM never lowers the likelihood, runs EM on
# points in the plane, compares the seed's covariance update with the textbook one, takes
# the mixture to its k-means limit, shows how the start decides which local maximum EM
# finds, checks the package against scikit-learn, and segments a photograph by clustering
# its pixel colours. Three exercises close it.
#
# "The seed" is the short study note on the EMANet paper that this tutorial grew from; the
# equation numbers (1)-(9) used throughout the package are its numbers.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import sklearn.cluster
import sklearn.mixture
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse
from scipy.special import logsumexp, softmax
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
# Why alternating them never lowers $\ln p(X \mid \theta)$ is drawn after the first EM
# run below, where the bound it rests on can be computed.
#
# ## The mixture and its $Q$
#
# A Gaussian mixture with $K$ components, mixing weights $\pi_k$, means $\mu_k$ and
# covariances $\Sigma_k$ models each point as
#
# $$
# p(x_n) = \sum_{k=1}^{K} \pi_k\, \mathcal{N}(x_n \mid \mu_k, \Sigma_k). \tag{3}
# $$
#
# (The seed note writes $z_{nk}$ for the weights and leaves $\pi_k$ out, i.e. $\pi_k = 1/K$;
# the package does both: `weights=None` is the uniform prior.) The latent variable of point
# $n$ is a one-hot vector $z_n$ saying which component produced it, so the complete-data
# log-likelihood is
#
# $$
# \ln p(X, Z \mid \theta) = \sum_{n=1}^{N} \sum_{k=1}^{K} z_{nk} \big[\ln \pi_k + \ln \mathcal{N}(x_n \mid \mu_k, \Sigma_k)\big],
# $$
#
# and it is *linear* in $z_{nk}$. Taking its expectation under $p(Z \mid X, \theta^{\text{old}})$,
# as (1) asks, therefore just replaces each indicator $z_{nk} \in \{0, 1\}$ by its posterior
# mean, the **responsibility** of component $k$ for point $n$ (Bishop's notation):
#
# $$
# Q(\theta, \theta^{\text{old}}) = \sum_{n=1}^{N} \sum_{k=1}^{K} \gamma(z_{nk})
#   \Big[\ln \pi_k - \tfrac{d}{2}\ln 2\pi - \tfrac12 \ln\lvert\Sigma_k\rvert
#   - \tfrac12 (x_n - \mu_k)^\top \Sigma_k^{-1} (x_n - \mu_k)\Big],
# \qquad
# \gamma(z_{nk}) = \mathbb{E}[z_{nk}] = p(z_{nk} = 1 \mid x_n, \theta^{\text{old}}).
# $$
#
# In this notebook $z_{nk}$ is always the 0/1 indicator and $\gamma(z_{nk}) \in [0, 1]$ its
# mean. The seed and the EMANet paper write $z_{nk}$ for both; the code keeps a short name:
# the $(N, K)$ array of $\gamma(z_{nk})$ is `resp` here and in `em_tutorial.gmm`, `z` in
# `em_tutorial.ema`.
#
# ## The equations beside the package
#
# A toy data set: three elongated clusters in the plane, and a starting point for EM.

# %%
def three_clusters(rng, sizes=(250, 200, 150)):
    shapes = [np.array([[1.5, 0.8], [0.0, 0.4]]),  # each cluster: A^T A is its covariance
              np.array([[0.5, 0.0], [0.3, 1.2]]),
              np.array([[0.7, -0.5], [0.0, 0.6]])]
    centres = [(-2.5, 0.0), (2.0, 2.0), (1.5, -2.5)]
    return np.concatenate([rng.standard_normal((n, 2)) @ a + c
                           for a, c, n in zip(shapes, centres, sizes)])


X = three_clusters(rng)  # (N, 2)
K = 3

start = np.random.default_rng(2)
means = X[start.choice(len(X), K, replace=False)]  # (K, 2) initial means: three random points
covariances = np.stack([np.eye(2)] * K)  # (K, 2, 2) initial covariances: identity
weights = np.full(K, 1 / K)
precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")

# %% [markdown]
# The package computes everything in log space, through the Cholesky factor $P_k$ of the
# precision, $\Sigma_k^{-1} = P_k P_k^\top$ (each precision's Cholesky factor is computed once
# per M-step; the E-step solves no linear system):
#
# $$
# \ln \mathcal{N}(x_n \mid \mu_k, \Sigma_k)
# = -\tfrac{d}{2} \ln 2\pi - \tfrac12 \big\lVert (x_n - \mu_k)^\top P_k \big\rVert^2 + \ln\lvert P_k \rvert .
# $$
#
# Each cell below writes an equation in a few lines of NumPy, straight from the formula, and
# asserts that `em_tutorial.gmm` computes the same numbers. The density (3) is also checked
# against SciPy.

# %%
def log_density_by_formula(X, means, covariances):
    """ln N(x_n | mu_k, Sigma_k) with an explicit inverse and determinant: (N, K)."""
    d = X.shape[1]
    columns = []
    for mu, sigma in zip(means, covariances):
        diff = X - mu  # (N, d)
        mahalanobis = np.einsum("nd,de,ne->n", diff, np.linalg.inv(sigma), diff)  # (N,)
        columns.append(-0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(sigma)[1] + mahalanobis))
    return np.stack(columns, axis=1)  # (N, K)


log_density = gmm.log_gaussian_density(X, means, precisions_cholesky, "full")  # (N, K)
np.testing.assert_allclose(log_density, log_density_by_formula(X, means, covariances), rtol=1e-12)
scipy_log_density = multivariate_normal(means[0], covariances[0]).logpdf(X)  # (N,) component 0
np.testing.assert_allclose(log_density[:, 0], scipy_log_density, rtol=1e-12)
print("eq. (3): package == formula == scipy.stats")

# %% [markdown]
# The log-likelihood sums the log of (3) over the points,
#
# $$
# \ln p(X \mid \pi, \mu, \Sigma) = \sum_{n=1}^{N} \ln \sum_{k=1}^{K} \pi_k\, \mathcal{N}(x_n \mid \mu_k, \Sigma_k). \tag{4}
# $$
#
# A note on the seed: it labels (4) $\ln p(X, Z)$. The formula is the *incomplete*-data
# log-likelihood $\ln p(X)$ (the sum over $k$ inside the logarithm is the sum over $Z$);
# $\ln p(X, Z)$ is the complete-data one written out above, with no sum inside the logarithm.
# This tutorial uses the formula and calls it by its right name.
#
# **The E-step (5)** computes the responsibilities $\gamma(z_{nk})$ in $Q$: the posterior of
# $z_{nk}$, by Bayes' rule,
#
# $$
# \gamma(z_{nk}) = \frac{\pi_k\, \mathcal{N}(x_n \mid \mu_k, \Sigma_k)}{\sum_{j} \pi_j\, \mathcal{N}(x_n \mid \mu_j, \Sigma_j)}
# \qquad (\theta = \theta^{\text{old}}). \tag{5}
# $$
#
# The logarithm of a sum of exponentials is taken with the log-sum-exp trick, so that
# far-away points do not underflow to $\ln 0$; the E-step (5) is then a softmax over $k$ of
# the weighted log-densities.

# %%
weighted = log_density + np.log(weights)  # (N, K): ln pi_k + ln N(x_n | mu_k, Sigma_k)

# eq. (4): sum_n ln sum_k pi_k N(x_n | mu_k, Sigma_k)
np.testing.assert_allclose(gmm.log_likelihood(X, means, precisions_cholesky, "full", weights),
                           logsumexp(weighted, axis=1).sum(), rtol=1e-12)
# eq. (5): gamma(z_nk) = pi_k N_nk / sum_j pi_j N_nj, a softmax over k
resp = gmm.e_step(X, means, precisions_cholesky, "full", weights)  # (N, K)
np.testing.assert_allclose(resp, softmax(weighted, axis=1), rtol=1e-12, atol=1e-300)
print("eq. (4) and eq. (5): package == formula")

# %% [markdown]
# **The M-step (7)** sets the derivatives of $Q$ to zero; the E-step's $\gamma(z_{nk})$ are
# constants now.
#
# - Means. Only the quadratic term depends on $\mu_k$:
#   $\partial Q / \partial \mu_k = \sum_n \gamma(z_{nk})\, \Sigma_k^{-1} (x_n - \mu_k) = 0$. Multiply by
#   $\Sigma_k$ and solve, with the soft count $N_k = \sum_n \gamma(z_{nk})$:
#   $\mu_k = \frac{1}{N_k} \sum_n \gamma(z_{nk})\, x_n$.
# - Covariances. Differentiate with respect to the precision $\Lambda_k = \Sigma_k^{-1}$, using
#   $\partial \ln\lvert\Lambda\rvert / \partial \Lambda = \Lambda^{-1}$ and
#   $\partial\, a^\top \Lambda a / \partial \Lambda = a a^\top$:
#   $\partial Q / \partial \Lambda_k = \tfrac12 \sum_n \gamma(z_{nk}) \big[\Sigma_k - (x_n - \mu_k)(x_n - \mu_k)^\top\big] = 0$,
#   so $\Sigma_k = \frac{1}{N_k} \sum_n \gamma(z_{nk}) (x_n - \mu_k)(x_n - \mu_k)^\top$, centred on the
#   $\mu_k$ that solves the first equation: both derivatives vanish *together* at the new mean.
# - Weights. Maximise $\sum_k N_k \ln \pi_k$ under $\sum_k \pi_k = 1$ with a Lagrange
#   multiplier $\beta$: $N_k / \pi_k + \beta = 0$ for every $k$; summing over $k$ gives
#   $\beta = -N$, so $\pi_k = N_k / N$.
#
# $$
# \pi_k = \frac{N_k}{N}, \qquad
# \mu_k = \frac{1}{N_k} \sum_n \gamma(z_{nk})\, x_n, \qquad
# \Sigma_k = \frac{1}{N_k} \sum_n \gamma(z_{nk})\, (x_n - \mu_k)(x_n - \mu_k)^\top + \varepsilon I. \tag{7}
# $$
#
# The small $\varepsilon$ (`reg_covar`) is not part of the maximum; it keeps a component that
# sits on a single point from collapsing to a singular covariance.
#
# Below, these formulas beside `gmm.m_step`, and the reconstruction (8),
# $\tilde x_n = \sum_k \gamma(z_{nk})\, \mu_k$, which plays no role in fitting the mixture but
# is the output of EM attention in EMANet (notebook 2):

# %%
counts = resp.sum(axis=0)  # (K,) N_k = sum_n gamma(z_nk)
new_weights = counts / len(X)  # pi_k = N_k / N
new_means = resp.T @ X / counts[:, None]  # (K, N) @ (N, d) -> (K, d)
new_covariances = np.stack([
    (resp[:, k, None] * (X - new_means[k])).T @ (X - new_means[k]) / counts[k]  # (d, d)
    for k in range(K)
]) + 1e-6 * np.eye(2)  # + reg_covar I

for ours, package in zip((new_weights, new_means, new_covariances), gmm.m_step(X, resp, "full")):
    np.testing.assert_allclose(package, ours, rtol=1e-10)
np.testing.assert_allclose(gmm.reconstruct(resp, means), resp @ means, rtol=1e-12)  # eq. (8)
print("eq. (7) and eq. (8): package == formula")

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
# coloured by the responsibilities that produced the parameters drawn (three components,
# read as red, green, blue: a mixed colour is a point shared between components).

# %%
COLOURS = ("red", "limegreen", "blue")


def draw_components(ax, means, covariances, linestyle="-"):
    for mean, cov, colour in zip(means, covariances, COLOURS):
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(eigenvectors[1, 1], eigenvectors[0, 1]))
        for radius in (1, 2):
            width, height = 2 * radius * np.sqrt(eigenvalues[::-1])
            ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color=colour,
                                 lw=1.5 if radius == 1 else 0.8, ls=linestyle))
        ax.plot(*mean, "x", color=colour, ms=8, mew=2)


def responsibilities(parameters):
    weights, means, covariances = parameters
    precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")
    return gmm.e_step(X, means, precisions_cholesky, "full", weights)  # (N, K)


shown = (0, 1, 2, 4, 8, 40)
fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.4), sharex=True, sharey=True)
for ax, t in zip(axes, shown):
    # the responsibilities that produced iteration t (none yet at t = 0)
    ax.scatter(*X.T, s=4, c="grey" if t == 0 else responsibilities(history[t - 1]))
    draw_components(ax, *history[t][1:])
    ax.set(title=f"iteration {t}", xlabel="$x_1$", aspect="equal")
axes[0].set_ylabel("$x_2$")
axes[-1].legend(handles=[Line2D([], [], color="k", lw=1.5, label="1 std. dev."),
                         Line2D([], [], color="k", lw=0.8, label="2 std. dev."),
                         Line2D([], [], color="k", marker="x", ls="", label=r"mean $\mu_k$")],
                loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The bound that touches the likelihood
#
# Why EM never lowers the likelihood: for *any* distribution $q(Z)$ the log-likelihood
# splits into a lower bound and a Kullback-Leibler divergence, which is never negative
# (Bishop, PRML §9.4):
#
# $$
# \ln p(X \mid \theta)
# = \underbrace{\sum_Z q(Z) \ln \frac{p(X, Z \mid \theta)}{q(Z)}}_{\mathcal{L}(q,\, \theta)}
# + \underbrace{\sum_Z q(Z) \ln \frac{q(Z)}{p(Z \mid X, \theta)}}_{\mathrm{KL}(q \,\|\, p(Z \mid X, \theta)) \;\ge\; 0}.
# $$
#
# The E-step (1) takes $q(Z) = p(Z \mid X, \theta^{\text{old}})$: the KL term vanishes at
# $\theta^{\text{old}}$, so the bound *touches* the log-likelihood there. With that $q$,
# $\mathcal{L}(q, \theta) = Q(\theta, \theta^{\text{old}}) + H(q)$, and the entropy $H(q)$ does
# not depend on $\theta$: maximising $Q$ in the M-step (2) maximises the bound. The new
# likelihood is at least the bound at $\theta^{\text{new}}$, which is at least the bound at
# $\theta^{\text{old}}$, which *is* the old likelihood.
#
# The figure below draws this on the data above (Bishop's Fig. 9.14 is the sketch of it).
# Take the first iteration: $\theta^{\text{old}}$ is the start, $q$ the responsibilities
# $\gamma(z_{nk})$ it gives, $\theta^{\text{new}}$ the M-step's answer. Parameters live in
# many dimensions, so walk the path $\theta(t)$ from $\theta^{\text{old}}$ ($t = 0$) to
# $\theta^{\text{new}}$ ($t = 1$) and a little beyond (means and Cholesky factors of the
# covariances move linearly, the weights through their logarithms). Along it, draw the
# log-likelihood $\ln p(X \mid \theta(t))$, the bound
# $\mathcal{L}(q, \theta(t)) = Q(\theta(t), \theta^{\text{old}}) + H(q)$, and the gap between
# them.

# %%
def interpolated(old, new, t):
    """theta(t): theta_old at t = 0, theta_new at t = 1."""
    (w0, m0, c0), (w1, m1, c1) = old, new
    log_w = (1 - t) * np.log(w0) + t * np.log(w1)
    chol = (1 - t) * np.linalg.cholesky(c0) + t * np.linalg.cholesky(c1)  # (K, d, d)
    return (np.exp(log_w) / np.exp(log_w).sum(), (1 - t) * m0 + t * m1,
            chol @ np.swapaxes(chol, 1, 2))


def log_likelihood_at(parameters):
    weights, means, covariances = parameters
    precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")
    return float(gmm.log_likelihood(X, means, precisions_cholesky, "full", weights))


def lower_bound(q, parameters):
    """L(q, theta) = Q(theta, theta_old) + H(q), with q = gamma(z_nk) of theta_old."""
    weights, means, covariances = parameters
    precisions_cholesky = gmm.precisions_cholesky_from_covariances(covariances, "full")
    joint = gmm.log_gaussian_density(X, means, precisions_cholesky, "full") + np.log(weights)
    Q = np.sum(q * joint)  # sum_nk gamma(z_nk) [ln pi_k + ln N(x_n | mu_k, Sigma_k)]
    entropy = -np.sum(q * np.log(np.clip(q, 1e-300, None)))  # H(q) = -sum_nk q_nk ln q_nk
    return float(Q + entropy)


theta_old, theta_new = history[0], history[1]
q = responsibilities(theta_old)
ts = np.linspace(-0.25, 1.25, 31)  # steps of 0.05: t = 0 and t = 1 are on the grid
curve = np.array([log_likelihood_at(interpolated(theta_old, theta_new, t)) for t in ts])
bound = np.array([lower_bound(q, interpolated(theta_old, theta_new, t)) for t in ts])
gap = curve - bound  # ln p - L = KL(q || p(Z | X, theta(t)))
assert np.isclose(lower_bound(q, theta_old), log_likelihoods[0], rtol=1e-12)  # touches at t = 0
assert np.all(gap >= -1e-9)  # a bound everywhere on the path
gap_new = log_likelihoods[1] - lower_bound(q, theta_new)
print(f"at theta_old: ln p(X) = {log_likelihoods[0]:.3f} = L(q, theta_old), gap "
      f"{log_likelihoods[0] - lower_bound(q, theta_old):.1e}")
print(f"at theta_new: L(q, theta_new) = {lower_bound(q, theta_new):.3f} "
      f"<= ln p(X) = {log_likelihoods[1]:.3f}, gap {gap_new:.2f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
left.plot(ts, curve, color="tab:red", label=r"$\ln p(X \mid \theta(t))$, eq. (4)")
left.plot(ts, bound, color="tab:blue", label=r"$\mathcal{L}(q, \theta(t)) = Q + H(q)$")
left.plot([0, 1], [log_likelihoods[0], lower_bound(q, theta_new)], "o", color="tab:blue")
left.plot([1], [log_likelihoods[1]], "o", color="tab:red")
left.annotate(r"touch at $\theta^{\mathrm{old}}$", (0, log_likelihoods[0]), (0.25, 0.2),
              textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
left.annotate(r"M-step: the bound's maximum", (1, lower_bound(q, theta_new)), (0.4, 0.45),
              textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
left.set(ylabel="log-likelihood / bound", title="the lower bound and the log-likelihood")
left.legend(loc="lower right")

right.plot(ts, gap, color="tab:purple")
right.plot([0, 1], [0, gap_new], "o", color="tab:purple")
right.annotate("0 at $\\theta^{\\mathrm{old}}$:\nthe E-step closed the gap", (0, 0), (0.08, 0.45),
               textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
right.annotate("$\\mathrm{KL}(q \\,\\|\\, p(Z \\mid X, \\theta^{\\mathrm{new}}))$"
               f" = {gap_new:.1f}:\nthe next E-step closes it", (1, gap_new), (0.3, 0.75),
               textcoords="axes fraction", arrowprops={"arrowstyle": "->"})
right.set(ylabel=r"$\ln p(X \mid \theta(t)) - \mathcal{L}(q, \theta(t))$ (nats)",
          title=r"the gap: $\mathrm{KL}(q \,\|\, p(Z \mid X, \theta(t))) \geq 0$")
right.set_ylim(bottom=-0.05 * gap.max())
for ax in (left, right):
    ax.axvline(0, color="grey", lw=0.5)
    ax.axvline(1, color="grey", lw=0.5)
    ax.set_xlabel(r"$t$ along $\theta(t)$: $\theta^{\mathrm{old}}$ at 0, "
                  r"$\theta^{\mathrm{new}}$ at 1")
fig.suptitle("EM iteration 1, along the path from the old to the new parameters")
plt.tight_layout()
plt.show()

# %% [markdown]
# Left: the blue curve is a bound everywhere and meets the red one at $t = 0$; its maximum is
# at $t = 1$, because $\theta^{\text{new}}$ maximises $Q$ over *all* parameters, not only
# along this path. On a scale of thousands of nats the two curves look alike; the right panel
# draws the difference itself. Since $q$ does not change along the path, the decomposition
# above says that difference is $\mathrm{KL}(q \,\|\, p(Z \mid X, \theta(t)))$: zero
# exactly at $\theta^{\text{old}}$, where $q$ *is* the posterior, and positive wherever the
# parameters have moved away from the ones $q$ was computed from. At $\theta^{\text{new}}$
# the likelihood has therefore climbed by more than the bound did, by the gap printed
# above; the next E-step sets $q$ to the new posterior, closes the gap, and the next M-step
# climbs a new bound (exercise 3 computes that gap from the responsibilities alone).
#
# Over the whole run the log-likelihood therefore never falls:

# %%
def never_decreases(curve):
    """True if no step lowers the log-likelihood by more than float64 rounding."""
    return bool(np.all(np.diff(curve) >= -1e-12 * np.abs(curve).max()))


fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(log_likelihoods, ".-")
ax.set(xlabel="iteration", ylabel=r"$\ln p(X \mid \theta)$, eq. (4)",
       title="EM never decreases the likelihood")
plt.show()
print("log-likelihood never decreases:", never_decreases(log_likelihoods))

# %% [markdown]
# ## The seed's covariance: old mean or new mean?
#
# The seed note writes the covariance update with the *old* mean,
# $\Sigma_k = \frac{1}{N_k}\sum_n \gamma(z_{nk})(x_n - \mu_k^{\text{old}})(x_n - \mu_k^{\text{old}})^\top$;
# the derivation above (and Bishop, PRML eq. 9.25) gives the new one. Expanding around the
# new mean shows the difference:
#
# $$
# \frac{1}{N_k}\sum_n \gamma(z_{nk})(x_n - \mu^{\text{old}}_k)(x_n - \mu^{\text{old}}_k)^\top
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
resp_0 = responsibilities(history[0])
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
ax.legend(handles=[Line2D([], [], color="k", label="textbook (new mean)"),
                   Line2D([], [], color="k", ls="--", label="seed (old mean)"),
                   Line2D([], [], color="k", marker=r"$\rightarrow$", ls="", ms=12,
                          label=r"$\mu^{\mathrm{old}} \to \mu^{\mathrm{new}}$")],
          loc="lower left", fontsize=8)
ax.set(title="first M-step: the two covariances", xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
plt.show()

# %% [markdown]
# Does the seed's form break EM's promise that the likelihood never falls? It does not: it is
# a *conditional-maximisation* step (ECM, Meng and Rubin 1993), a kind of generalised EM that
# raises $Q$ without maximising it. Scored on the current responsibilities, the old
# parameters see exactly the scatter $\Sigma^{\text{textbook}}_k + \Delta_k\Delta_k^\top$
# around their means, and no covariance fits a scatter better than that scatter itself; the
# seed's covariance *is* that scatter, and moving the mean to its new place only shrinks the
# scatter it has to explain. So the seed's step gives a $Q$ at least as high as the old
# parameters', and that is all the monotonicity argument above needs. What it gives up is
# the largest step: each step gains at most as much $Q$ as the textbook one. At a fixed
# point, where $\Delta_k = 0$, the two forms coincide. On this data the seed's run, from the
# same start, trails the textbook one by about an iteration; the inflation matters most while
# the means travel far compared with the size of their clusters.
#
# The right panel measures the distance to the maximum both runs reach, $\ln p^\star$, taken
# from a long textbook run (300 iterations). Distances below $10^{-9}$ are float64 rounding
# of a sum of 600 terms and are not drawn.

# %%
_, log_likelihoods_seed, _ = run_em(X, means, covariances, weights, n_iter=40,
                                    covariance_means="old")
best = run_em(X, means, covariances, weights, n_iter=300)[1][-1]  # ln p*, the maximum EM reaches


def distance_to_best(curve):
    gap = best - curve
    return np.where(gap > 1e-9, gap, np.nan)  # below 1e-9: rounding, not drawn


fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
left.plot(log_likelihoods, ".-", label="new mean (textbook)")
left.plot(log_likelihoods_seed, ".-", label="old mean (seed)")
left.set(xlabel="iteration", ylabel=r"$\ln p(X \mid \theta)$", ylim=(log_likelihoods[1], None),
         title="log-likelihood")
left.legend()
right.semilogy(distance_to_best(log_likelihoods), ".-", label="new mean (textbook)")
right.semilogy(distance_to_best(log_likelihoods_seed), ".-", label="old mean (seed)")
right.set(xlabel="iteration", ylabel=r"$\ln p^\star - \ln p(X \mid \theta)$",
          title="distance to the maximum")
right.legend()
plt.tight_layout()
plt.show()
for name, curve in (("new mean", log_likelihoods), ("old mean", log_likelihoods_seed)):
    steps = int(np.argmax(best - curve < 1e-3))
    print(f"{name}: never decreases {never_decreases(curve)}, within 1e-3 of ln p* after "
          f"{steps} iterations, final log-likelihood {curve[-1]:.4f}")

# %% [markdown]
# ## The k-means limit
#
# Give every component one and the same spherical covariance $\sigma^2 I$ and keep it fixed.
# The E-step (5) becomes
#
# $$
# \gamma(z_{nk}) = \frac{\pi_k \exp\!\big(-\lVert x_n - \mu_k \rVert^2 / 2\sigma^2\big)}
#                       {\sum_j \pi_j \exp\!\big(-\lVert x_n - \mu_j \rVert^2 / 2\sigma^2\big)},
# $$
#
# and as $\sigma \to 0$ the term of the nearest mean outgrows all the others, whatever the
# weights: $\gamma(z_{nk}) \to 1$ for the $k$ with the smallest $\lVert x_n - \mu_k\rVert$ and
# $\to 0$ for the rest. The responsibilities become hard assignments, and the mean update of
# (7), $\mu_k = \sum_n \gamma(z_{nk})\, x_n / \sum_n \gamma(z_{nk})$, becomes the mean of the
# points assigned to $k$: the two steps of **k-means** (Lloyd's algorithm), whose objective
# $\sum_n \lVert x_n - \mu_{k(n)} \rVert^2$ is what is left of $-2\sigma^2 Q$ in the limit
# (Bishop, PRML §9.3.2). The figure shows the responsibilities hardening as $\sigma$ shrinks,
# with the three starting means of the run above.

# %%
def nearest_mean(X, means):
    """k-means' assignment step: one-hot (N, K), a 1 at the nearest mean."""
    squared_distances = np.sum((X[:, None, :] - means[None, :, :]) ** 2, axis=2)  # (N, K)
    return np.eye(len(means))[np.argmin(squared_distances, axis=1)]  # (N, K)


def spherical_responsibilities(X, means, sigma, weights):
    """gamma(z_nk) of the mixture whose components all have covariance sigma^2 I: (N, K)."""
    precisions_cholesky = np.full(len(means), 1 / sigma)  # (K,) spherical: 1 / sigma_k
    return gmm.e_step(X, means, precisions_cholesky, "spherical", weights)


# sigma -> 0: the package's E-step is k-means' assignment, even with unequal weights
hard = nearest_mean(X, means)  # (N, K)
for limit_weights in (weights, np.array([0.8, 0.15, 0.05])):
    np.testing.assert_array_equal(spherical_responsibilities(X, means, 1e-3, limit_weights), hard)
# ... and its M-step on hard assignments is k-means' centroid update
centroids = np.stack([X[hard[:, k] == 1].mean(axis=0) for k in range(K)])  # (K, d)
np.testing.assert_allclose(gmm.m_step(X, hard, "spherical")[1], centroids, rtol=1e-12)
print("sigma = 1e-3: gmm.e_step == nearest-mean assignment, gmm.m_step means == centroids")

sigma_grid = np.geomspace(3, 1e-3, 40)
shared = [np.mean(spherical_responsibilities(X, means, sigma, weights).max(axis=1) < 0.99)
          for sigma in sigma_grid]  # fraction of points still shared between components
sigmas_shown = (1.5, 0.5, 0.05)
fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
for ax, sigma in zip(axes, sigmas_shown):
    ax.scatter(*X.T, s=4, c=spherical_responsibilities(X, means, sigma, weights))
    for mean, colour in zip(means, COLOURS):
        ax.plot(*mean, "X", mfc=colour, mec="k", ms=11)
    ax.set(title=f"$\\sigma$ = {sigma}", xlabel="$x_1$", aspect="equal")
axes[0].set_ylabel("$x_2$")
axes[-1].semilogx(sigma_grid, shared, ".-")
for sigma in sigmas_shown:
    axes[-1].axvline(sigma, color="grey", lw=0.5)
axes[-1].invert_xaxis()
axes[-1].set(xlabel=r"$\sigma$ (shrinking to the right)",
             ylabel=r"fraction with $\max_k \gamma(z_{nk}) < 0.99$",
             title="points still shared")
fig.suptitle(r"$\Sigma_k = \sigma^2 I$: points coloured by $\gamma(z_{nk})$ (red, green, blue); "
             "crosses = the means, held fixed")
plt.tight_layout()
plt.show()

# %% [markdown]
# So k-means is EM for this mixture with $\sigma$ frozen near 0. Run both from the same
# means: EM with $\sigma = 10^{-3}$, using only the package's E-step and the means of its
# M-step, and scikit-learn's `KMeans` (Lloyd's algorithm) end at the same centroids.

# %%
limit_means = means
for _ in range(30):
    hard_resp = spherical_responsibilities(X, limit_means, 1e-3, weights)  # (N, K), one-hot
    limit_means = gmm.m_step(X, hard_resp, "spherical")[1]  # (K, d), the means of (7)
kmeans = sklearn.cluster.KMeans(n_clusters=K, init=means, n_init=1, algorithm="lloyd").fit(X)
np.testing.assert_allclose(kmeans.cluster_centers_, limit_means, rtol=1e-10)
print(f"k-means converged after {kmeans.n_iter_} iterations; largest difference to EM's "
      f"sigma -> 0 means after 30: {np.max(np.abs(kmeans.cluster_centers_ - limit_means)):.1e}")

# %% [markdown]
# The limit explains both the family resemblance and the difference: k-means gives every
# point to one cluster and measures only distances, while the mixture shares points near a
# boundary and learns each cluster's shape and size (the ellipses above). Notebook 2 meets
# the same limit again: EM attention's hard-assignment end is spherical k-means.
#
# ## Where EM starts decides where it ends
#
# No step lowers the likelihood, so EM climbs to *a* maximum of $\ln p(X \mid \theta)$;
# which one depends on where it starts, and the likelihood of a mixture has many (every
# relabelling of the components is already $K!$ copies of each). Below, 30 starts of the run
# above, each from three other random points as the means (identity covariances, equal
# weights), 200 iterations each; runs are grouped by the value they end at.

# %%
n_starts = 30
ends = []  # (final log-likelihood, curve, final parameters, start means) of every start
for seed in range(n_starts):
    start_means = X[np.random.default_rng(seed).choice(len(X), K, replace=False)]  # (K, d)
    run_history, run_curve, _ = run_em(X, start_means, covariances, weights, n_iter=200)
    ends.append((run_curve[-1], run_curve, run_history[-1], start_means))
    assert never_decreases(run_curve)

# runs that end within 0.01 of each other reached the same maximum
finals = np.array([end[0] for end in ends])
levels = []
for value in sorted(finals, reverse=True):
    if not levels or levels[-1] - value > 0.01:
        levels.append(value)
group_of = [int(np.argmin(np.abs(np.array(levels) - value))) for value in finals]
for g, level in enumerate(levels):
    print(f"ln p = {level:10.2f}: reached from {group_of.count(g):2d} of {n_starts} starts")
last_change = max(np.max(np.abs(np.diff(end[1][-50:]))) for end in ends)
print(f"largest change of ln p in any run's last 50 iterations: {last_change:.1e}")

GROUP_COLOURS = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")
shown_groups = range(min(len(levels), 3))
fig, axes = plt.subplots(1, 1 + len(shown_groups), figsize=(4.3 * (1 + len(shown_groups)), 3.8))
for (_, run_curve, _, _), g in zip(ends, group_of):
    axes[0].plot(run_curve, color=GROUP_COLOURS[g % len(GROUP_COLOURS)], lw=0.8, alpha=0.7)
axes[0].set(xscale="symlog", xlabel="iteration", ylabel=r"$\ln p(X \mid \theta)$",
            ylim=(levels[-1] - 0.3 * (levels[0] - levels[-1]),
                  levels[0] + 0.1 * (levels[0] - levels[-1])),
            title=f"{n_starts} starts, coloured by where they end")
for ax, g in zip(axes[1:], shown_groups):
    _, _, (_, final_means, final_covariances), start_means = ends[group_of.index(g)]
    ax.scatter(*X.T, s=3, c="lightgrey")
    draw_components(ax, final_means, final_covariances)
    ax.plot(*start_means.T, "o", mfc="none", mec="k", ms=7)
    ax.set(aspect="equal", xlabel="$x_1$",
           title=f"ln p = {levels[g]:.1f} ({group_of.count(g)} of {n_starts} starts)")
    for side in ("top", "bottom", "left", "right"):
        ax.spines[side].set(color=GROUP_COLOURS[g], lw=2)
axes[1].legend(handles=[Line2D([], [], color="k", marker="o", mfc="none", ls="",
                               label="start means")], loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()

# the highest maximum's grouping stands for the clusters as drawn; at each lower maximum,
# share[c, k] is the fraction of cluster c's points whose most responsible component is k
clusters = responsibilities(ends[group_of.index(0)][2]).argmax(axis=1)  # (N,)
print(f"{len(levels) - 1} lower maxima")
for g in range(1, len(levels)):
    grouping = responsibilities(ends[group_of.index(g)][2]).argmax(axis=1)  # (N,)
    share = np.array([np.bincount(grouping[clusters == c], minlength=K) / np.sum(clusters == c)
                      for c in range(K)])  # (K clusters, K components)
    main = share.argmax(axis=1)  # (K,) the component that takes most of each cluster
    assert sorted(np.bincount(main, minlength=K)) == [0, 1, 2]  # one component, two clusters
    covering = np.bincount(main).argmax()  # the component that takes most of two clusters
    third = np.flatnonzero(main != covering)[0]
    others = [k for k in range(K) if k != covering]
    print(f"ln p = {levels[g]:.2f}: the {COLOURS[covering]} component takes "
          f"{share[main == covering, covering].min():.0%} or more of two clusters; the third is "
          f"shared {share[third, others[0]]:.0%} / {share[third, others[1]]:.0%} by the other two")

# %% [markdown]
# Most starts reach the same, highest maximum: the three clusters as they were drawn. The
# others stop on lower ones (how many is printed under the figure), each with one component
# covering two clusters and two sharing the third (the shares printed). The runs barely move
# there any more (the largest change printed), and no step will leave: a local maximum is a
# fixed point of EM, since the bound that touches the likelihood there is maximised by the
# parameters already in hand. Some runs also sit for tens of iterations on a plateau before
# they find the way up (the green curves that rise late): a slow climb can look like
# convergence.
#
# Two remedies, both in `gmm.GaussianMixture` as in scikit-learn: start from a better place
# (the default, `init_params="kmeans"`, runs k-means first), and run several starts and keep
# the one of highest likelihood (`n_init`). Each is tried from 10 random states:

# %%
seeds = range(10)
for init_params, n_init in (("random_from_data", 1), ("random_from_data", 10), ("kmeans", 1)):
    reached = np.array([
        gmm.GaussianMixture(n_components=K, init_params=init_params, n_init=n_init,
                            random_state=seed).fit(X).score(X) * len(X)  # ln p, eq. (4)
        for seed in seeds
    ])
    print(f"init_params={init_params!r:19s} n_init={n_init:2d}: the highest maximum "
          f"(within 1 of {levels[0]:.2f}) from {np.sum(reached > levels[0] - 1)} of "
          f"{len(seeds)} random states, lowest ln p {reached.min():.2f}")

# %% [markdown]
# A single start from random data points can miss the highest maximum. Starting from k-means
# helps but guarantees nothing, since k-means climbs to local optima of its own (it is the
# $\sigma \to 0$ limit of this same EM); keeping the best of ten starts found the highest
# maximum from every random state tried. When a fit is cheap, several starts are the simple,
# reliable remedy.
#
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
reconstruction = mixture.reconstruct(pixels)  # (N, 3) eq. 8: sum_k gamma(z_nk) mu_k

fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
axes[0].imshow(photo)
axes[0].set_title("image")
axes[1].imshow(labels.reshape(H, W), cmap="tab10", interpolation="nearest")
axes[1].set_title("most responsible component")
axes[2].imshow(np.clip(reconstruction.reshape(H, W, 3), 0, 1))
axes[2].set_title(r"reconstruction $\tilde x_n = \sum_k \gamma(z_{nk})\mu_k$ (8)")
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The mixture found sky, water, foliage and the building's tones without being told what an
# object is. Colour does not separate them all, though: the hazy sky above the far shore
# falls into the water's component. Same colour, different object: that is what colour
# cannot do, and what is left to the learnt features of notebook 5. The reconstruction (8)
# paints each pixel with the mean colours of its components: six colours reproduce the
# picture's structure, the "compact representation" that EMANet builds from its bases.
#
# Next, notebook 2 shrinks this mixture to the special case EMANet runs on its feature maps.

# %% [markdown]
# ## Exercises
#
# Each exercise leaves a function returning `None`. Replace its body with your answer and run
# the hidden cell after it (click the "..." to see its code): it says *not yet* while the
# answer is `None`, *right* when it is, and otherwise what is wrong, with a hint. The checks
# compare with the package and never stop the notebook: an error raised inside your
# function is reported with the hint.
#
# **Exercise 1: the tied-covariance M-step.** With one covariance $\Sigma$ shared by all
# components, $Q$ becomes
# $\sum_{n,k} \gamma(z_{nk})[\ln \pi_k - \tfrac12 \ln\lvert\Sigma\rvert - \tfrac12 (x_n - \mu_k)^\top\Sigma^{-1}(x_n - \mu_k)] + \text{const}$.
# Set $\partial Q / \partial \Sigma^{-1} = 0$ as above and implement the result (without
# `reg_covar`). The means are unchanged from (7).

# %% tags=["exercise"]
def tied_covariance(X, resp, means):
    """The shared (d, d) covariance that maximises Q; X (N, d), resp (N, K), means (K, d)."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
from exercises import check

_, _means_1, _tied = gmm.m_step(X, resp, "tied", reg_covar=0.0)
check("Exercise 1", lambda: tied_covariance(X, resp, _means_1), _tied,
      "differentiate as for Sigma_k in (7); the shared Sigma now collects a term from every "
      "component k as well as every point n, and the soft counts N_k add up to N.")

# %% [markdown]
# **Exercise 2: the spherical E-step.** With $\Sigma_k = \sigma_k^2 I$ the log-density is
# $-\tfrac{d}{2}\ln(2\pi\sigma_k^2) - \lVert x_n - \mu_k\rVert^2 / (2\sigma_k^2)$. Write the
# E-step (5) for it, in log space, with no matrix inverse.

# %% tags=["exercise"]
def spherical_e_step(X, means, variances, weights):
    """gamma(z_nk), (N, K), for Sigma_k = variances[k] I; X (N, d), means (K, d), variances (K,)."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
_variances = np.array([0.5, 1.0, 2.0])
check("Exercise 2", lambda: spherical_e_step(X, means, _variances, weights),
      gmm.e_step(X, means, 1 / np.sqrt(_variances), "spherical", weights),
      "the normaliser of a d-dimensional sigma_k^2 I Gaussian has d factors of sigma_k, and "
      "with unequal sigma_k it does not cancel between components. Build the (N, K) array of "
      "ln pi_k + ln N(x_n | mu_k, sigma_k^2 I) by broadcasting (X[:, None, :] - means[None]), "
      "then normalise every row over k in log space, as in (5).")

# %% [markdown]
# **Exercise 3: the gap the next E-step closes.** In the bound figure, at $\theta^{\text{new}}$
# the log-likelihood lies above $\mathcal{L}(q, \theta^{\text{new}})$ by
# $\mathrm{KL}(q \,\|\, p(Z \mid X, \theta^{\text{new}}))$. Compute that KL from the two sets of
# responsibilities alone, $q$ = `responsibilities(theta_old)` and
# `responsibilities(theta_new)` (no likelihoods).

# %% tags=["exercise"]
def gap_at_new(q_old, q_new):
    """KL(q_old || q_new) summed over the points: a float."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
check("Exercise 3", lambda: gap_at_new(q, responsibilities(theta_new)),
      log_likelihoods[1] - lower_bound(q, theta_new),
      "the KL term of the decomposition above the bound figure splits into one KL per point, "
      "between that point's two rows of responsibilities; a component with q_nk = 0 adds "
      "nothing.")
