"""Each equation of em_tutorial.gmm against an independent reference: SciPy's densities and
float64 hand computations written here, for all four covariance types. Also: the blocked fast
paths equal the plain functions, and everything runs on array_api_strict arrays (so a
NumPy-only call inside the package fails here, on the CPU)."""

import array_api_strict
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import logsumexp as scipy_logsumexp
from scipy.stats import multivariate_normal

from em_tutorial import gmm
from em_tutorial.gmm import fast
from em_tutorial.gmm.fast._diagonal import centred_data

TYPES = ["full", "tied", "diag", "spherical"]
N, D, K = 60, 3, 4


def random_parameters(rng, covariance_type, n_features=D, n_components=K):
    """(weights, means, covariances) of a random mixture, covariances shaped per type."""
    weights = rng.dirichlet(np.ones(n_components))
    means = rng.normal(scale=2.0, size=(n_components, n_features))
    if covariance_type == "full":
        A = rng.normal(size=(n_components, n_features, n_features))
        covariances = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(n_features)
    elif covariance_type == "tied":
        A = rng.normal(size=(n_features, n_features))
        covariances = A @ A.T + 0.5 * np.eye(n_features)
    elif covariance_type == "diag":
        covariances = rng.uniform(0.3, 2.0, size=(n_components, n_features))
    else:
        covariances = rng.uniform(0.3, 2.0, size=n_components)
    return weights, means, covariances


def full_covariance(covariances, covariance_type, k):
    """Sigma_k as a (d, d) matrix, whatever the type (the reference side of the tests)."""
    if covariance_type == "full":
        return covariances[k]
    if covariance_type == "tied":
        return covariances
    if covariance_type == "diag":
        return np.diag(covariances[k])
    return covariances[k] * np.eye(D)


def scipy_log_density(X, means, covariances, covariance_type):
    return np.stack(
        [multivariate_normal(means[k], full_covariance(covariances, covariance_type, k)).logpdf(X)
         for k in range(len(means))],
        axis=1,
    )


@pytest.fixture(params=TYPES)
def problem(request, rng):
    covariance_type = request.param
    weights, means, covariances = random_parameters(rng, covariance_type)
    X = rng.normal(scale=3.0, size=(N, D))
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    return covariance_type, X, weights, means, covariances, precisions_chol


def test_precision_cholesky_inverts_covariance(problem):
    covariance_type, _, _, _, covariances, precisions_chol = problem
    precisions = gmm.precisions_from_cholesky(precisions_chol, covariance_type)
    for k in range(K):
        sigma = full_covariance(covariances, covariance_type, k)
        prec = full_covariance(precisions, covariance_type, k)
        assert_allclose(sigma @ prec, np.eye(D), atol=1e-10)
    assert_allclose(
        gmm.covariances_from_precisions_cholesky(precisions_chol, covariance_type), covariances,
        rtol=1e-10,
    )
    assert_allclose(
        gmm.precisions_cholesky_from_precisions(precisions, covariance_type), precisions_chol,
        rtol=1e-10, atol=1e-12,
    )


def test_spherical_precision_cholesky_is_one_over_sigma():
    assert_allclose(gmm.precisions_cholesky_from_covariances(np.array([4.0, 0.25]), "spherical"),
                    [0.5, 2.0])


@pytest.mark.parametrize("density", [gmm.log_gaussian_density, fast.log_gaussian_density_blocked])
def test_log_density_matches_scipy(problem, density):
    covariance_type, X, _, means, covariances, precisions_chol = problem
    expected = scipy_log_density(X, means, covariances, covariance_type)
    assert_allclose(density(X, means, precisions_chol, covariance_type), expected, rtol=1e-10)


@pytest.mark.parametrize("n_threads", [1, 3])
def test_blocked_density_uses_several_blocks(problem, n_threads):
    # Blocks in order whatever the threads: a block out of place would move its rows.
    covariance_type, X, _, means, _, precisions_chol = problem
    plain = gmm.log_gaussian_density(X, means, precisions_chol, covariance_type)
    for block_size in (1, 7, N):
        blocked = fast.log_gaussian_density_blocked(
            X, means, precisions_chol, covariance_type, block_size=block_size,
            n_threads=n_threads)
        assert_allclose(blocked, plain, rtol=1e-12)


def test_e_step_is_posterior(problem):
    covariance_type, X, weights, means, covariances, precisions_chol = problem
    log_joint = scipy_log_density(X, means, covariances, covariance_type) + np.log(weights)
    expected = np.exp(log_joint - scipy_logsumexp(log_joint, axis=1, keepdims=True))
    resp = gmm.e_step(X, means, precisions_chol, covariance_type, weights=weights)
    assert_allclose(resp, expected, rtol=1e-10, atol=1e-300)
    assert_allclose(resp.sum(axis=1), 1.0, rtol=1e-12)
    log_resp, log_norm = gmm.log_e_step(X, means, precisions_chol, covariance_type, weights)
    assert_allclose(np.exp(log_resp), resp, rtol=1e-12)
    assert_allclose(log_norm, scipy_logsumexp(log_joint, axis=1), rtol=1e-12)


def test_e_step_without_weights_is_the_seeds_uniform_prior(problem):
    # Eq. 5 as the seed writes it: z_nk = N_k(x_n) / sum_j N_j(x_n), no pi.
    covariance_type, X, _, means, covariances, precisions_chol = problem
    densities = np.exp(scipy_log_density(X, means, covariances, covariance_type))
    expected = densities / densities.sum(axis=1, keepdims=True)
    assert_allclose(gmm.e_step(X, means, precisions_chol, covariance_type), expected, rtol=1e-9)


def test_e_step_survives_points_far_from_every_component():
    # N(x | mu, I) underflows to 0 in float64 at distance ~40; the log-space softmax does not.
    means = np.array([[0.0], [1.0]])
    precisions_chol = np.ones((2, 1, 1))
    resp = gmm.e_step(np.array([[1000.0]]), means, precisions_chol)
    assert_allclose(resp, [[0.0, 1.0]])


def test_log_likelihood_is_eq_4(problem):
    covariance_type, X, weights, means, covariances, precisions_chol = problem
    mixture_density = np.exp(scipy_log_density(X, means, covariances, covariance_type)) @ weights
    expected = np.sum(np.log(mixture_density))
    got = gmm.log_likelihood(X, means, precisions_chol, covariance_type, weights=weights)
    assert_allclose(float(got), expected, rtol=1e-10)
    uniform = gmm.log_likelihood(X, means, precisions_chol, covariance_type)
    expected_uniform = np.sum(np.log(np.exp(
        scipy_log_density(X, means, covariances, covariance_type)).mean(axis=1)))
    assert_allclose(float(uniform), expected_uniform, rtol=1e-10)


def hand_m_step(X, resp, covariance_type, reg_covar, centres=None):
    """Eq. 7 with explicit sums over n, in float64."""
    n_samples, n_components = resp.shape
    counts = resp.sum(axis=0)
    means = np.array([sum(resp[n, k] * X[n] for n in range(n_samples)) / counts[k]
                      for k in range(n_components)])
    centres = means if centres is None else centres
    scatter = np.array([
        sum(resp[n, k] * np.outer(X[n] - centres[k], X[n] - centres[k]) for n in range(n_samples))
        for k in range(n_components)
    ])
    if covariance_type == "full":
        covariances = scatter / counts[:, None, None] + reg_covar * np.eye(D)
    elif covariance_type == "tied":
        covariances = scatter.sum(axis=0) / n_samples + reg_covar * np.eye(D)
    else:
        variances = np.diagonal(scatter, axis1=1, axis2=2) / counts[:, None] + reg_covar
        covariances = variances if covariance_type == "diag" else variances.mean(axis=1)
    return counts / n_samples, means, covariances


@pytest.mark.parametrize("step, block_size", [(gmm.m_step, None), (fast.m_step_blocked, 1),
                                              (fast.m_step_blocked, 7), (fast.m_step_blocked, 512)])
@pytest.mark.parametrize("old_means", [False, True], ids=["new-mean", "seed-old-mean"])
def test_m_step_is_eq_7(problem, rng, old_means, step, block_size):
    covariance_type, X, _, means, _, _ = problem
    resp = rng.dirichlet(np.ones(K), size=N)
    centres = means if old_means else None
    expected = hand_m_step(X, resp, covariance_type, 1e-3, centres)
    kwargs = {} if block_size is None else {"block_size": block_size}
    got = step(X, resp, covariance_type, reg_covar=1e-3, covariance_means=centres, **kwargs)
    for g, e in zip(got, expected):
        assert_allclose(g, e, rtol=1e-10)


@pytest.mark.parametrize("weighted", [True, False], ids=["weights", "uniform"])
@pytest.mark.parametrize("seed_form", [False, True], ids=["textbook", "seed-form"])
def test_em_step_is_e_step_then_m_step(problem, weighted, seed_form):
    covariance_type, X, weights, means, _, precisions_chol = problem
    weights = weights if weighted else None
    resp = gmm.e_step(X, means, precisions_chol, covariance_type, weights)
    expected = gmm.m_step(X, resp, covariance_type, 1e-3,
                          covariance_means=means if seed_form else None)
    expected_log_likelihood = float(
        gmm.log_likelihood(X, means, precisions_chol, covariance_type, weights)
    ) / N
    # X centred once for a fit (diag, spherical; the others ignore it), here around the mean
    # of all samples rather than of the step's first block: any c gives the same step.
    centred = centred_data(X, np.mean(X, axis=0, keepdims=True), covariance_type)
    for step, block_size, n_threads, once in [
        (gmm.em_step, None, None, None), (fast.em_step_blocked, 1, 1, None),
        (fast.em_step_blocked, 7, 1, None), (fast.em_step_blocked, 7, 3, None),
        (fast.em_step_blocked, 1000, 1, None), (fast.em_step_blocked, 7, 3, centred),
    ]:
        kwargs = {} if block_size is None else {"block_size": block_size, "n_threads": n_threads,
                                                "centred": once}
        *got, mean_log_likelihood = step(X, weights, means, precisions_chol, covariance_type,
                                         1e-3, seed_form, **kwargs)
        for g, e in zip(got, expected):
            assert_allclose(g, e, rtol=1e-10, err_msg=f"{step.__name__} {block_size}")
        assert_allclose(float(mean_log_likelihood), expected_log_likelihood, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", TYPES)
@pytest.mark.parametrize("n_features", [24, 48])
def test_blocked_step_above_the_small_feature_path(rng, covariance_type, n_features):
    """The engine's products for d > 16 (one wide product, scaling in place) are eq. 3-7 too.

    Every other test here runs at d = 3, on the engine's small-feature path. Planted once:
    scaling the differences by z instead of sqrt(z) above 16 features failed this test (and
    no other test of this file)."""
    weights, means, covariances = random_parameters(rng, covariance_type, n_features, K)
    X = rng.normal(scale=3.0, size=(500, n_features))
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    expected_density = gmm.log_gaussian_density(X, means, precisions_chol, covariance_type)
    for n_threads in (1, 2):
        got_density = fast.log_gaussian_density_blocked(X, means, precisions_chol,
                                                        covariance_type, block_size=64,
                                                        n_threads=n_threads)
        assert_allclose(got_density, expected_density, rtol=1e-10)
    *expected, expected_mean_log_likelihood = gmm.em_step(X, weights, means, precisions_chol,
                                                          covariance_type, 1e-3)
    for n_threads in (1, 2):
        *got, mean_log_likelihood = fast.em_step_blocked(
            X, weights, means, precisions_chol, covariance_type, 1e-3, block_size=64,
            n_threads=n_threads)
        for g, e in zip(got, expected):
            assert_allclose(g, e, rtol=1e-9, atol=1e-12)
        assert_allclose(float(mean_log_likelihood), float(expected_mean_log_likelihood),
                        rtol=1e-12)


def test_old_mean_inflates_covariance_by_mean_shift(rng):
    # Seed's eq. 7: Sigma_old = Sigma_new + (mu_new - mu_old)(mu_new - mu_old)^T.
    X = rng.normal(size=(N, D))
    resp = rng.dirichlet(np.ones(K), size=N)
    old_means = rng.normal(size=(K, D))
    _, means, textbook = gmm.m_step(X, resp, "full", reg_covar=0.0)
    _, _, seed_form = gmm.m_step(X, resp, "full", reg_covar=0.0, covariance_means=old_means)
    shift = means - old_means
    assert_allclose(seed_form, textbook + shift[:, :, None] * shift[:, None, :], rtol=1e-10)


def test_reconstruct_is_eq_8(rng):
    resp = rng.dirichlet(np.ones(K), size=N)
    means = rng.normal(size=(K, D))
    expected = np.array([sum(resp[n, k] * means[k] for k in range(K)) for n in range(N)])
    assert_allclose(gmm.reconstruct(resp, means), expected, rtol=1e-12)
    # One-hot responsibilities reconstruct each point as its component's mean.
    assert_allclose(gmm.reconstruct(np.eye(K), means), means)


# --- the same functions on array_api_strict arrays -------------------------------------------


def strict(array):
    return array_api_strict.asarray(array)


@pytest.mark.parametrize("blocked", [False, True], ids=["plain", "blocked"])
def test_functions_run_on_array_api_strict(problem, rng, blocked):
    covariance_type, X, weights, means, covariances, precisions_chol = problem
    resp = rng.dirichlet(np.ones(K), size=N)
    density = fast.log_gaussian_density_blocked if blocked else gmm.log_gaussian_density
    em_step = fast.em_step_blocked if blocked else gmm.em_step
    m_step = fast.m_step_blocked if blocked else gmm.m_step
    args = (means, precisions_chol, covariance_type)
    strict_args = (strict(means), strict(precisions_chol), covariance_type)

    pairs = [
        (density(strict(X), *strict_args), density(X, *args)),
        (gmm.e_step(strict(X), *strict_args, weights=strict(weights)),
         gmm.e_step(X, *args, weights=weights)),
        (gmm.e_step(strict(X), *strict_args), gmm.e_step(X, *args)),
        (gmm.log_likelihood(strict(X), *strict_args, weights=strict(weights)),
         gmm.log_likelihood(X, *args, weights=weights)),
        (gmm.logsumexp(strict(X), axis=1), scipy_logsumexp(X, axis=1)),
        (gmm.reconstruct(strict(resp), strict(means)), gmm.reconstruct(resp, means)),
        (gmm.precisions_cholesky_from_covariances(strict(covariances), covariance_type),
         precisions_chol),
        (gmm.covariances_from_precisions_cholesky(strict(precisions_chol), covariance_type),
         covariances),
    ]
    pairs += list(zip(m_step(strict(X), strict(resp), covariance_type),
                      m_step(X, resp, covariance_type)))
    pairs += list(zip(
        m_step(strict(X), strict(resp), covariance_type, covariance_means=strict(means)),
        m_step(X, resp, covariance_type, covariance_means=means),
    ))
    for seed_form in (False, True):
        pairs += list(zip(
            em_step(strict(X), strict(weights), strict(means), strict(precisions_chol),
                    covariance_type, seed_form=seed_form),
            em_step(X, weights, means, precisions_chol, covariance_type, seed_form=seed_form),
        ))
    for got, expected in pairs:
        assert type(got).__module__.startswith("array_api_strict")
        assert_allclose(np.from_dlpack(got), expected, rtol=1e-10)


def assert_step_matches(got, expected, X, covariance_type, tolerances):
    """An EM step's outputs against the float64 reference, each with its own tolerance on
    the data's scale: weights absolute; means as (mu - centre) / sd; covariances over
    sd_i sd_j; the mean log-likelihood in nats per sample, and relative to its size where
    far-away means make it large.

    ``tolerances`` maps "weights", "means", "covariances", "log_likelihood" to a bound.
    (A tolerance taken from the largest output, 1e-4 of means near 1e4, let the fast
    engine's means move by 5 sd unseen; shifting them by 5 now fails every case here.)
    """
    X = np.asarray(X, dtype=np.float64)
    centre, sd = X.mean(axis=0), X.std(axis=0)  # (d,), (d,)
    weights, means, covariances, mean_log_likelihood = (np.asarray(a, np.float64) for a in got)
    ref_weights, ref_means, ref_covariances, ref_log_likelihood = expected
    assert_allclose(weights, ref_weights, rtol=0, atol=tolerances["weights"])
    assert_allclose((means - centre) / sd, (ref_means - centre) / sd, rtol=0,
                    atol=tolerances["means"])
    scale = {"full": np.outer(sd, sd), "tied": np.outer(sd, sd), "diag": sd**2,
             "spherical": np.mean(sd**2)}[covariance_type]
    assert_allclose(covariances / scale, ref_covariances / scale, rtol=0,
                    atol=tolerances["covariances"])
    assert_allclose(mean_log_likelihood, ref_log_likelihood,
                    rtol=tolerances["log_likelihood"], atol=tolerances["log_likelihood"])


@pytest.mark.parametrize("covariance_type", TYPES)
def test_blocked_step_keeps_float32_digits_far_from_the_origin(rng, covariance_type):
    # Data at 1e3 with unit spread: E[x x^T] - mu mu^T would cancel 6 of float32's 7 digits.
    # Centring before squaring keeps the covariances to float32 rounding (eps * 1e3 ~ 1e-4
    # of the spread). The reference is float64 arithmetic on the same float32 inputs.
    X = (rng.normal(size=(400, D)) + 1e3).astype(np.float32)
    resp = rng.dirichlet(np.ones(K), size=len(X)).astype(np.float32)
    inputs = (X, *gmm.m_step(X, resp, covariance_type))
    inputs = (*inputs[:3], gmm.precisions_cholesky_from_covariances(inputs[3], covariance_type))
    expected = gmm.em_step(*(a.astype(np.float64) for a in inputs), covariance_type)
    got = fast.em_step_blocked(*inputs, covariance_type)
    assert all(g.dtype == np.float32 for g in got)
    assert_step_matches(got, expected, X, covariance_type, dict(
        weights=1e-5, means=1e-3, covariances=1e-3, log_likelihood=1e-3))


@pytest.mark.parametrize("dtype, jump", [(np.float32, 1e3), (np.float64, 1e5)])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_blocked_step_after_a_long_jump_of_the_means(rng, covariance_type, dtype, jump):
    # Means `jump` standard deviations from the data: moving the centre of the one-pass
    # scatter would cancel more than half the digits, so the step centres a second pass on
    # the new means instead. The reference is float64 arithmetic on the same inputs; data at
    # 1e4 with unit spread are rounded at eps * 1e4 of it (6e-4 in float32, 2e-12 in float64).
    X = (rng.normal(size=(300, D)) + 1e4).astype(dtype)
    resp = rng.dirichlet(np.ones(K), size=len(X)).astype(dtype)
    weights, means, covariances = gmm.m_step(X, resp, covariance_type)
    precisions_chol = gmm.precisions_cholesky_from_covariances(covariances, covariance_type)
    inputs = (X, weights, means + dtype(jump), precisions_chol)
    expected = gmm.em_step(*(a.astype(np.float64) for a in inputs), covariance_type)
    got = fast.em_step_blocked(*inputs, covariance_type)
    tolerance = 1e-2 if dtype == np.float32 else 1e-9
    assert_step_matches(got, expected, X, covariance_type, dict(
        weights=tolerance, means=tolerance, covariances=tolerance, log_likelihood=tolerance))


@pytest.mark.parametrize("separation", [30.0, 38.0, 45.0])
def test_blocked_step_with_vanishing_responsibilities(rng, separation):
    # Clusters so far apart that ln z_nk reaches -450 .. -1000: around exp's underflow the
    # fast path sets terms below sqrt(tiny) to zero (to avoid slow subnormal arithmetic).
    X = np.vstack([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + separation])
    means = np.array([[0.0, 0.0], [separation, separation]])
    precisions_chol = np.tile(np.eye(2), (2, 1, 1))
    weights = np.array([0.5, 0.5])
    expected = gmm.em_step(X, weights, means, precisions_chol)
    for got, e in zip(fast.em_step_blocked(X, weights, means, precisions_chol), expected):
        assert_allclose(got, e, rtol=1e-12)
