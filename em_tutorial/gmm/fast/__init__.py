"""The fast engine: the same E-step, M-step and densities as :mod:`em_tutorial.gmm.equations`,
in one pass.

:class:`GaussianMixture` runs these by default (``algorithm="fast"``); the plain
one-function-per-equation path (``algorithm="reference"``) computes the same numbers and is
tested equal. Each trick below, with what it bought in fits of 10 iterations, NumPy float64,
measured side by side (alternating, median of 3) on a 2-core machine that other work was
loading at the time, so the ratios are indicative:

1. **Blocking.** X is walked in blocks of :data:`BLOCK_SIZE` samples (the estimator picks
   the size per type and shape, :func:`em_tutorial.gmm.fast._blocks.cpu_block_size`). Each
   block goes through the E-step and straight into the M-step's sums while it is still in
   cache, and no (N, K) or (N, K, d) array is ever built. The fast engine against the reference
   engine, full covariance, 50k x 16 x 16: 1.7x.
2. **Full: whitened differences, reused.** One batched product against
   [[P_k], [-mu_k P_k]] gives every y_nk = (x_n - mu_k) P_k of a block, shape (K, B, d);
   their squared norms are the Mahalanobis distances, and the M-step's scatter
   sum_n z_nk (x_n - mu_k)(x_n - mu_k)^T = P_k^{-T} (sum_n z_nk y_nk^T y_nk) P_k^{-1}
   reuses them instead of a second pass that forms the differences again: 2.2x per step.
   Above 16 features the sum is formed as (sqrt(z_nk) y_nk)^T (sqrt(z_nk) y_nk), one array
   times its own transpose, which BLAS computes as a symmetric rank-k update (half the
   products); at 16 and fewer a general product is faster
   (:data:`em_tutorial.gmm.fast._full.GENERAL_PRODUCT_MAX_FEATURES`). Above 16 features the
   y_nk of a block also come from one product (B, d + 1) @ (d + 1, K d) for all K rather
   than K thin ones, laid out (B, K, d), and sqrt(z_nk) scales them in place in that order:
   a step at 20k x 128 x 8 took 0.76x the time (median of 9, alternating, two threads).
3. **Tied, diag and spherical: expanded distances, never K or d x d times the work.** With x
   centred once on a reference point c (the first block's mean),
   ||(x - mu_k) p_k||^2 = sum_j P_kj x_j^2 - 2 sum_j P_kj a_kj x_j + sum_j P_kj a_kj^2
   (P_kj = p_kj^2, a_k = mu_k - c), so products of x and x^2 with coefficients give all K
   distances and products of z with x and x^2 give the M-step's moments: O(N K d) work, no
   d x d matrix (diag at 20k x 128 x 8: 12.5x faster than the earlier version that built
   them). Diag and spherical hold x - c and its squares side by side, [x - c, (x - c)^2],
   so that a block's K distances are one product with [-2 P_k a_k, P_k] and its moments
   one product of z with the same array (spherical keeps only ||x - c||^2, e = 1). In the
   E-step -1/2 and ln pi_k + ln |P_k| go into those coefficients too, so that a block's
   log-joint ln pi_k N_nk is one product and one sum, not a product, a clip at 0 and a
   scaling (diag and spherical fits 0.82-0.95x the time across the grid); the distances
   and z_nk are laid out (K, B), so that the log-sum-exp over k runs across rows of B
   samples rather than along rows of K (each a small gain in a step that is mostly these
   products). Tied whitens each block once, (x - c) P, instead of once per component. The
   expansion rounds off by ~4 eps ||(c - mu_k) P_k||^2; where that exceeds 0.01 nats
   (narrow components far from c) the distances come from centred differences instead.
4. **Re-centring, judged from the new scatter.** The scatter comes out around another centre
   (the old means, or c) and moves to the new means, S_new = S_old - N_k s s^T for the shift
   s. That rounds off every entry by ~eps N_k ||s||^2, in any direction, so it cancels about
   log10(N_k ||s||^2 / lambda_min(S_new)) digits in the narrowest direction of S_new (tied:
   sum_k N_k ||m_k||^2 against the pooled scatter's lambda_min; diag and spherical:
   coordinate by coordinate). Where that would be more than half the dtype's digits (a ratio
   above ~2900 in float32, ~7e7 in float64) the step makes a second pass over X centred on
   the new means. Looking only along s missed a thin direction oblique to it: a cluster 100
   times narrower along (1, -1) than along (1, 1), its mean 30 sd away, lost 73 % of that
   variance in float32. A component that shrinks a lot in one step is caught this way; the
   old spread would not show it. Diag and spherical re-centre only the components that
   cancel (in the spherical fit at 20k x 128 x 8 one component shrinks to almost no spread
   and is caught in every step from the fourth on), and reuse the step's z_nk where they
   take no more memory than X (K <= d) instead of running the E-step again: the second pass
   then only forms the (K', B, d) differences of those K' components, and only for the
   samples with some z_nk > 0 in them. A component that shrinks that far weighs few: in that
   fit, 1 sample of 20 000, so a step with the second pass now takes as long as one without
   (going over every sample, the pass had added ~5 ms to an ~11 ms step). Centring on c
   keeps the moments of trick 3 accurate: data at 1000 with spread 0.01 lose no more digits
   than data at 0.
5. **Threads.** On the CPU, ``n_threads`` threads share the blocks (in the E-step of
   ``predict`` and ``score`` too), each taking the next block when it is free; NumPy and
   BLAS release the interpreter lock. With both cores free this gave ~1.7x (``RESULTS.md``:
   the full-covariance ratio to scikit-learn went from 0.154 to 0.25-0.27 with one core
   busy); with the second core loaded, as during the measurements above, it gives nothing.
   Taking the next free block rather than every n-th one matters on a shared machine, where
   the system now and then holds one thread up: at 20k x 128 x 8 (10 blocks) diag fits
   took 0.75-0.76x the time and spherical 0.82-0.86x (two runs of 9 fits each,
   alternating); elsewhere no change. The blocks are of one size and as many as a multiple
   of the threads (:func:`em_tutorial.gmm.fast._blocks.block_slices`), so that neither
   thread waits out a short last block at the end of a step; with blocks of up to 8192
   samples where the temporaries are (B, d) and (B, K), 20k x 128 x 8 gets four blocks of
   5000, and its diag and spherical fits took 0.92x and 0.89x the time (median of 7,
   alternating, against the previous commit; the other cells of the grid 0.92-1.01x).
   The threads are kept for the process (:func:`em_tutorial.gmm.fast._blocks.thread_pool`)
   rather than started and joined in every step, which cost a third of a diag step at
   20k x 128 x 8.
6. **Diag and spherical: X centred once per fit.** The reference point c does not change
   from step to step, so the estimator forms [x_n - c, (x_n - c)^2] once for the fit
   (:func:`em_tutorial.gmm.fast._diagonal.centred_data`), instead of in every block of every
   step: a copy of X twice its size for diag, one column wider for spherical. Fits of 10
   iterations at 20k x 128 x 8, alternating with fits that centre every block, 11 each:
   centring once took diag to 0.80x the time, spherical 0.84x (at 100k x 16 x 16 0.87x and
   0.89x; at 200k x 4 x 32 no change), and keeping the squares too took diag a further
   0.91x and spherical 0.81x. The array is filled block by block on the threads, each
   block squared while it is in cache: X read once, the array written once (diag at
   20k x 128 x 8: a fit 0.89x the time of filling it with whole-array passes).

Tricks 1, 5 and 6 leave the arithmetic as it is; tricks 2-4 reorder it, which is why the tests
compare every function here with its plain counterpart (``tests/test_gmm_equations.py``,
``tests/test_gmm_properties.py``, ``tests/test_gmm_numerics.py``,
``tests/test_gmm_recentring.py``).
"""

from __future__ import annotations

from em_tutorial.backend import get_array_module
from em_tutorial.gmm.equations import (
    check_parameter_shapes,
    counts_weights_means,
    covariances_from_scatter,
    guarded_counts,
    log_density_from_mahalanobis,
)
from em_tutorial.gmm.fast._blocks import BLOCK_SIZE, block_slices
from em_tutorial.gmm.fast._diagonal import diagonal_mahalanobis_all, diagonal_step
from em_tutorial.gmm.fast._full import full_em_sums, full_mahalanobis, full_step_scatter
from em_tutorial.gmm.fast._tied import tied_mahalanobis_all, tied_step
from em_tutorial.gmm.precision import check_covariance_type, log_det_cholesky

DIAGONAL_TYPES = ("diag", "spherical")


def log_gaussian_density_blocked(
    X, means, precisions_cholesky, covariance_type="full", block_size=BLOCK_SIZE, n_threads=1
):
    """Same result as :func:`em_tutorial.gmm.log_gaussian_density`, block by block.

    Arguments as there (X (N, d), mu_k (K, d), P_k per ``covariance_type``), plus
    ``block_size``, the samples per block, and ``n_threads``, as in :func:`em_step_blocked`.

    Returns
    -------
    log_density : array of shape (N, K)
    """
    check_parameter_shapes(X, means, precisions_cholesky, covariance_type)
    if covariance_type in DIAGONAL_TYPES:
        mahalanobis = diagonal_mahalanobis_all(
            X, means, precisions_cholesky, covariance_type, block_size, n_threads)  # trick 3
    elif covariance_type == "tied":
        mahalanobis = tied_mahalanobis_all(
            X, means, precisions_cholesky, block_size, n_threads)  # trick 3
    else:
        mahalanobis = full_mahalanobis(
            X, means, precisions_cholesky, block_size, n_threads)  # trick 2
    log_det = log_det_cholesky(precisions_cholesky, covariance_type, X.shape[1])
    return log_density_from_mahalanobis(mahalanobis, log_det, X.shape[1])


def m_step_blocked(
    X, resp, covariance_type="full", reg_covar=1e-6, covariance_means=None, block_size=BLOCK_SIZE
):
    """Same result as :func:`em_tutorial.gmm.m_step`, block by block (used to initialise).

    The scatter of a block X_b of B samples is formed for all K components at once: the
    differences x_n - c_k as one (K, B, d) array, centred *before* squaring so float32 keeps
    its digits, then one batched product (K, d, B) @ (K, B, d), or for diag and spherical a
    weighted sum of squares, so no d x d matrix.

    Arguments and returns as in :func:`em_tutorial.gmm.m_step`, plus ``block_size``.
    """
    check_covariance_type(covariance_type)
    xp, counts, weights, means, centres = counts_weights_means(X, resp, covariance_means)
    scatter = 0.0
    for start, stop in block_slices(X.shape[0], block_size):
        resp_block = xp.matrix_transpose(resp[start:stop, :])  # (K, B)
        centred = X[None, start:stop, :] - centres[:, None, :]  # x_n - c_k: (K, B, d)
        weighted = resp_block[:, :, None] * centred  # z_nk (x_n - c_k): (K, B, d)
        if covariance_type in DIAGONAL_TYPES:
            weighted *= centred  # in place: z_nk (x_nj - c_kj)^2
            scatter = scatter + xp.sum(weighted, axis=1)  # (K, d)
        else:
            # (K, d, B) @ (K, B, d) -> (K, d, d)
            scatter = scatter + xp.matmul(xp.matrix_transpose(weighted), centred)
    return weights, means, covariances_from_scatter(scatter, counts, covariance_type, reg_covar)


def em_step_blocked(X, weights, means, precisions_cholesky, covariance_type="full",
                    reg_covar=1e-6, seed_form=False, block_size=BLOCK_SIZE, n_threads=1,
                    centred=None):
    """Same result as :func:`em_tutorial.gmm.em_step`, in one blocked pass over X.

    Arguments and returns as in :func:`em_tutorial.gmm.em_step`, plus

    block_size : int, default=BLOCK_SIZE
        Samples per block.
    n_threads : int, default=1
        CPU threads that share the blocks (NumPy only; a GPU parallelises inside each
        operation). With more than one, limit BLAS to one thread each, as
        :class:`GaussianMixture` does, or they oversubscribe the cores.
    centred : tuple, optional
        For diag and spherical, X centred once for the whole fit
        (:func:`em_tutorial.gmm.fast._diagonal.centred_data`, trick 6); formed in the step
        if not given. Other types ignore it.
    """
    check_parameter_shapes(X, means, precisions_cholesky, covariance_type)
    xp = get_array_module(X, means, precisions_cholesky, weights)
    if covariance_type in DIAGONAL_TYPES:
        counts, new_means, scatter, total_log_norm = diagonal_step(
            X, weights, means, precisions_cholesky, covariance_type, seed_form, block_size,
            n_threads, centred)
    elif covariance_type == "tied":
        counts, new_means, scatter, total_log_norm = tied_step(
            X, weights, means, precisions_cholesky, seed_form, block_size, n_threads)
    else:
        counts, weighted_sums, scatter, total_log_norm = full_em_sums(
            X, weights, means, precisions_cholesky, block_size, n_threads)
        scatter = full_step_scatter(X, weights, means, precisions_cholesky, counts,
                                    weighted_sums, scatter, seed_form, block_size, n_threads)
        counts = guarded_counts(counts)  # as in m_step, against empty components
        new_means = weighted_sums / counts[:, None]  # mu_k = (1/N_k) sum_n z_nk x_n
    new_weights = counts / xp.sum(counts)  # pi_k = N_k / N
    covariances = covariances_from_scatter(scatter, counts, covariance_type, reg_covar)
    return new_weights, new_means, covariances, total_log_norm / X.shape[0]
