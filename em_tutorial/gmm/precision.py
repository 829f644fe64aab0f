"""Covariances Sigma_k, precisions Sigma_k^{-1} and their Cholesky factors P_k.

The densities are evaluated through the *precision Cholesky factor* P_k, the upper-triangular
matrix with Sigma_k^{-1} = P_k P_k^T, because then

    (x - mu_k)^T Sigma_k^{-1} (x - mu_k) = ||(x - mu_k) P_k||^2    and
    ln |Sigma_k|^{-1/2} = sum_j ln (P_k)_jj,

so no matrix is ever inverted explicitly. Shapes follow scikit-learn, per covariance type:

=============  ================  =============================================
type           covariances       precisions_cholesky
=============  ================  =============================================
``full``       (K, d, d)         (K, d, d), upper triangular
``tied``       (d, d)            (d, d), one matrix shared by all components
``diag``       (K, d)            (K, d), P_k = diag(1 / sigma_kj)
``spherical``  (K,)              (K,), P_k = I / sigma_k
=============  ================  =============================================
"""

from __future__ import annotations

import numpy as np

from em_tutorial.backend import get_array_module, is_cupy_namespace, is_numpy_namespace
from em_tutorial.gmm._arrays import constant_like, eye_like, to_host

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


# --- Linear algebra ----------------------------------------------------------------------
#
# The two linear-algebra calls that differ between libraries, in one place.
#
# Everything else in :mod:`em_tutorial.gmm` uses only array-API-standard calls on ``xp``. A
# Cholesky factorisation is standard (``xp.linalg.cholesky``) but libraries report failure
# differently, and a triangular solve is not in the standard at all:
#
# ========================  ==============================  =================================
# namespace                 triangular solve                Cholesky of a non-PD matrix
# ========================  ==============================  =================================
# NumPy                     ``scipy.linalg``                raises ``LinAlgError``
# CuPy                      ``cupyx.scipy.linalg``          returns NaN (no host sync)
# other (array_api_strict)  general ``xp.linalg.solve``     whatever the library does
# ========================  ==============================  =================================


class NotPositiveDefiniteError(ValueError):
    """A Cholesky factorisation met a matrix that is not positive definite."""


def cholesky_lower(matrices, xp):
    """Lower Cholesky factor L of each matrix A = L L^T.

    Parameters
    ----------
    matrices : array of shape (..., d, d)
        Symmetric positive-definite matrices.
    xp : namespace

    Returns
    -------
    L : array of shape (..., d, d)
        Lower triangular. On CuPy a failed factorisation gives NaN instead of an error, so
        the caller can defer the check (a host round-trip) to a moment of its choosing.

    Raises
    ------
    NotPositiveDefiniteError
        Where the library itself detects a matrix that is not positive definite.
    """
    try:
        return xp.linalg.cholesky(matrices)
    except Exception as error:  # NumPy's LinAlgError, or another library's equivalent
        if "positive" in str(error).lower() or type(error).__name__ == "LinAlgError":
            raise NotPositiveDefiniteError(str(error)) from error
        raise


def invert_lower_triangular(lower, xp):
    """L^{-1} for lower-triangular L, batched over leading axes.

    Parameters
    ----------
    lower : array of shape (..., d, d)
    xp : namespace

    Returns
    -------
    inverse : array of shape (..., d, d), lower triangular
    """
    eye = xp.broadcast_to(eye_like(lower.shape[-1], lower), lower.shape)
    if is_numpy_namespace(xp):
        import scipy.linalg

        # NaN in, NaN out (as on CuPy): a collapsed component is reported by the caller.
        return scipy.linalg.solve_triangular(lower, eye, lower=True, check_finite=False)
    if is_cupy_namespace(xp):
        import cupyx.scipy.linalg

        if lower.ndim == 2:
            return cupyx.scipy.linalg.solve_triangular(lower, eye, lower=True)
        return xp.stack(
            [cupyx.scipy.linalg.solve_triangular(lower[k, ...], eye[k, ...], lower=True)
             for k in range(lower.shape[0])]
        )
    # A namespace without a triangular solver: the general solver, with the rounding above
    # the diagonal cleared so the result is exactly triangular.
    return xp.tril(xp.linalg.solve(lower, eye))


# --- Covariances, precisions and their Cholesky factors ----------------------------------



def check_covariance_type(covariance_type):
    """Raise a ValueError unless ``covariance_type`` is one of :data:`COVARIANCE_TYPES`."""
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )


def parameter_shape(covariance_type, n_components, n_features):
    """The shape of covariances, precisions and precision Cholesky factors for the type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


ROUNDING_ULPS = 8
"""A variance must exceed (ROUNDING_ULPS units in the last place of the component's
coordinates)^2 to be told apart from rounding noise: below that, the points' own rounding
could have made it."""


def rounding_floors(means, covariance_type, reg_covar=0.0):
    """The variance at or below which Sigma_k has collapsed, per component, on the host.

    Scale-aware: coordinates near |mu_k| are rounded to eps |mu_k|, so a variance below
    (ROUNDING_ULPS eps max_j |mu_kj|)^2 could be rounding noise: three clusters of spread
    0.01 around 1000 are fine in float32 (floor ~1e-6), a variance of 1e-28 around 100 in
    float64 is not (floor ~3e-26). With ``reg_covar > 0`` every variance is held up by
    reg_covar, which the user chose: then only one below reg_covar / 2 (a scatter that
    rounding drove negative) counts, as scikit-learn fits the rest.

    Returns
    -------
    floors : ndarray of shape (K,), or (1,) for ``tied`` (one matrix, the largest floor)
    """
    means = to_host(means)
    eps = np.finfo(means.dtype).eps
    floors = (ROUNDING_ULPS * eps * np.max(np.abs(means), axis=1).astype(np.float64)) ** 2
    if reg_covar > 0:
        floors = np.minimum(floors, reg_covar / 2)
    return floors.max(keepdims=True) if covariance_type == "tied" else floors


def collapsed_components(covariances, covariance_type, floor=0.0):
    """Indices k whose Sigma_k has an eigenvalue (a variance) <= ``floor``, or is not finite.

    ``floor=0`` asks for "not positive definite". A caller that knows the data's scale can
    pass the level of rounding noise instead (:func:`rounding_floors`, one per component):
    a variance of 1e-28 for data of size 100 is a component that sits on one point, even if
    it is still positive.

    Copies to the host and checks one component at a time: for error paths and once-per-fit
    checks only. For ``tied`` the single shared matrix is reported as component 0.
    """
    covariances = to_host(covariances).astype(np.float64)
    if covariance_type == "tied":
        covariances = covariances[np.newaxis]
    floors = np.broadcast_to(np.asarray(floor, dtype=np.float64), (len(covariances),))
    bad = []
    for k, (sigma, floor_k) in enumerate(zip(covariances, floors)):
        if not np.all(np.isfinite(sigma)):
            bad.append(k)
        elif covariance_type in ("full", "tied"):
            if np.linalg.eigvalsh(sigma).min() <= floor_k:
                bad.append(k)
        elif np.min(sigma) <= floor_k:
            bad.append(k)
    return bad


def collapse_error(covariances, covariance_type, reg_covar=None, floor=0.0):
    """The ValueError for collapsed covariances (see :func:`collapsed_components`), naming them.

    ``floor`` as in :func:`collapsed_components`.
    """
    bad = collapsed_components(covariances, covariance_type, floor)
    if covariance_type == "tied":
        where = "the tied covariance (shared by all components)"
    elif len(bad) == 1:
        where = f"component {bad[0]}"
    elif bad:
        where = "components " + ", ".join(str(k) for k in bad)
    else:  # every covariance passes the float64 check: the breakdown is in the working dtype
        where = "a component"
    now = "" if reg_covar is None else f" (reg_covar is now {reg_covar:g})"
    # scikit-learn's sentence first (its tests match it), then which component and why.
    return ValueError(
        "Fitting the mixture model failed because some components have ill-defined "
        "empirical covariance (for instance caused by singleton or collapsed samples). Try "
        "to decrease the number of components, increase reg_covar, or scale the input "
        f"data. Here {where} collapsed: the covariance is singular to working precision, "
        "typically because the component sits on a single point or on points that span "
        f"fewer dimensions than n_features. Increase reg_covar{now}, e.g. to 1e-3 times the "
        "data variance. With float32 data, float64 also helps."
    )


def precisions_cholesky_from_covariances(covariances, covariance_type="full", *, validate=True):
    """Precision Cholesky factors P_k with Sigma_k^{-1} = P_k P_k^T.

    With Sigma_k = L_k L_k^T (Cholesky, L_k lower), P_k = L_k^{-T}.

    Parameters
    ----------
    covariances : array
        Sigma, shaped as in the module table for ``covariance_type``.
    covariance_type : {"full", "tied", "diag", "spherical"}
    validate : bool, default=True
        Raise a ValueError naming the collapsed components if some Sigma_k is not positive
        definite. ``False`` skips the check that needs a host round-trip (on CuPy); a failed
        factor then holds NaN, which shows up in the next log-likelihood. Failures the library
        reports itself (NumPy's Cholesky) are always raised.

    Returns
    -------
    precisions_cholesky : array, same shape as ``covariances``
    """
    check_covariance_type(covariance_type)
    xp = get_array_module(covariances)
    if covariance_type in ("full", "tied"):
        try:
            lower = cholesky_lower(covariances, xp)
        except NotPositiveDefiniteError:
            raise collapse_error(covariances, covariance_type) from None
        # P = L^{-T}
        precisions_chol = xp.matrix_transpose(invert_lower_triangular(lower, xp))
    else:
        # P = 1 / sigma. A non-positive variance becomes NaN here (not a division warning).
        safe = xp.where(covariances > 0, covariances, constant_like(xp.nan, covariances))
        precisions_chol = 1.0 / xp.sqrt(safe)
    if validate and not bool(xp.all(xp.isfinite(precisions_chol))):
        raise collapse_error(covariances, covariance_type)
    return precisions_chol


def precisions_from_cholesky(precisions_cholesky, covariance_type="full"):
    """Precisions Sigma_k^{-1} = P_k P_k^T, same shape as ``precisions_cholesky``."""
    check_covariance_type(covariance_type)
    xp = get_array_module(precisions_cholesky)
    if covariance_type in ("full", "tied"):
        # (..., d, d) @ (..., d, d)
        return xp.matmul(precisions_cholesky, xp.matrix_transpose(precisions_cholesky))
    return precisions_cholesky**2


def _flip_both(matrices, xp):
    # Reverse rows and columns: turns a lower-triangular matrix into an upper one.
    return xp.flip(xp.flip(matrices, axis=-1), axis=-2)


def precisions_cholesky_from_precisions(precisions, covariance_type="full"):
    """Upper-triangular P_k with P_k P_k^T = Sigma_k^{-1}, from the precisions themselves.

    A Cholesky factor of the row-and-column-reversed precision, reversed back, is upper
    triangular; this matches scikit-learn's ``precisions_init`` handling.

    Raises
    ------
    ValueError
        If a precision is not positive definite.
    """
    check_covariance_type(covariance_type)
    xp = get_array_module(precisions)
    if covariance_type in ("full", "tied"):
        try:
            return _flip_both(cholesky_lower(_flip_both(precisions, xp), xp), xp)
        except NotPositiveDefiniteError:
            raise ValueError(
                f"the {covariance_type} precisions must be symmetric positive definite"
            ) from None
    return xp.sqrt(precisions)


def covariances_from_precisions_cholesky(precisions_cholesky, covariance_type="full"):
    """Sigma_k = (P_k P_k^T)^{-1} = P_k^{-T} P_k^{-1}, same shape as ``precisions_cholesky``."""
    check_covariance_type(covariance_type)
    xp = get_array_module(precisions_cholesky)
    if covariance_type in ("full", "tied"):
        # P is upper triangular, so P^T is lower.
        inv_pt = invert_lower_triangular(xp.matrix_transpose(precisions_cholesky), xp)  # P^{-T}
        return xp.matmul(inv_pt, xp.matrix_transpose(inv_pt))
    return 1.0 / precisions_cholesky**2


def log_det_cholesky(precisions_cholesky, covariance_type, n_features):
    """ln |P_k| = sum_j ln (P_k)_jj = -1/2 ln |Sigma_k|, for each component.

    Returns
    -------
    log_det : array of shape (K,), or a 0-d array for ``tied`` (shared by all components)
    """
    xp = get_array_module(precisions_cholesky)
    if covariance_type in ("full", "tied"):
        return xp.sum(xp.log(xp.linalg.diagonal(precisions_cholesky)), axis=-1)
    if covariance_type == "diag":
        return xp.sum(xp.log(precisions_cholesky), axis=1)
    return n_features * xp.log(precisions_cholesky)
