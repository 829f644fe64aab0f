"""Reconstruction, eq. 8: each point re-expressed by the K bases."""

from __future__ import annotations

from em_tutorial.backend import get_array_module


def reconstruct(resp, means):
    """x~_n = sum_k z_nk mu_k, eq. 8.

    Parameters
    ----------
    resp : array of shape (N, K)
        Responsibilities z_nk (rows sum to 1), e.g. from :func:`e_step`.
    means : array of shape (K, d)
        The bases mu_k.

    Returns
    -------
    X_tilde : array of shape (N, d)
    """
    xp = get_array_module(resp, means)
    if resp.ndim != 2 or means.ndim != 2 or resp.shape[1] != means.shape[0]:
        raise ValueError(
            "resp must be (n_samples, n_components) and means (n_components, n_features); got "
            f"{tuple(resp.shape)} and {tuple(means.shape)}"
        )
    return xp.matmul(resp, means)  # (N, K) @ (K, d) -> (N, d)
