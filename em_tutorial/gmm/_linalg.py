"""The two linear-algebra calls that differ between libraries, in one place.

Everything else in :mod:`em_tutorial.gmm` uses only array-API-standard calls on ``xp``. A
Cholesky factorisation is standard (``xp.linalg.cholesky``) but libraries report failure
differently, and a triangular solve is not in the standard at all:

========================  ==============================  =================================
namespace                 triangular solve                Cholesky of a non-PD matrix
========================  ==============================  =================================
NumPy                     ``scipy.linalg``                raises ``LinAlgError``
CuPy                      ``cupyx.scipy.linalg``          returns NaN (no host sync)
other (array_api_strict)  general ``xp.linalg.solve``     whatever the library does
========================  ==============================  =================================
"""

from __future__ import annotations

from em_tutorial.backend import is_cupy_namespace, is_numpy_namespace
from em_tutorial.gmm._arrays import eye_like


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
