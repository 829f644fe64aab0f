"""The Gaussian-mixture estimator with its data on the GPU.

:class:`em_tutorial.gmm.GaussianMixture` checks its input the scikit-learn way, which converts
it to NumPy, so a CuPy array cannot go through its ``fit`` as it is. Its EM loop, though, only
calls ``xp`` functions. :class:`GaussianMixtureGPU` replaces the input checks with device-side
ones (the parent's ``_fit_samples`` and ``_validated`` hooks) and leaves everything else to the
parent class, so the data never leaves the GPU:

* the checks read one boolean back to the host (are all values finite?), once per call;
* the k-means initialisations (``init_params="kmeans"`` or ``"k-means++"``) are
  scikit-learn's and run on a host copy of X, once per initialisation; ``"random"`` and
  ``"random_from_data"`` need no copy;
* each EM iteration reads one scalar back (the mean log-likelihood that decides convergence);
* the fitted ``weights_``, ``means_``, ``covariances_``, ``precisions_cholesky_`` are CuPy
  arrays; ``predict_proba``, ``score_samples`` and ``reconstruct`` take CuPy arrays and
  return them; ``predict`` and ``fit_predict`` return NumPy labels, as the parent does.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
from sklearn.utils.validation import check_is_fitted

from em_tutorial.backend import get_array_module, to_device, to_numpy
from em_tutorial.gmm import GaussianMixture

__all__ = ["GaussianMixtureGPU"]


class GaussianMixtureGPU(GaussianMixture):
    """:class:`em_tutorial.gmm.GaussianMixture` fitted on CuPy arrays, on the GPU.

    Same parameters, attributes and methods as the parent. ``X`` may be a CuPy array
    (float32 or float64, kept as it is) or anything ``numpy.asarray`` takes (moved to the GPU
    as float32, the GPU stage's precision). Other array-API arrays (``array_api_strict``)
    are kept in their namespace too, which is how the CPU-only tests exercise this path.
    ``weights_init``, ``means_init`` and ``precisions_init`` are host (NumPy) arrays: they
    are small, and the parent checks them with NumPy.

    Examples
    --------
    >>> from em_tutorial.gpu import GaussianMixtureGPU, to_gpu      # doctest: +SKIP
    >>> gm = GaussianMixtureGPU(16, init_params="random_from_data").fit(to_gpu(X))  # doctest: +SKIP
    """

    def _fit_samples(self, X):
        return self._device_samples(X, reset=True)

    def _checked_inits(self, X):
        return super()._checked_inits(_host_stand_in(X))  # the *_init arrays are NumPy

    def _validated(self, X):
        check_is_fitted(self)
        return self._device_samples(X, reset=False)

    def _initial_responsibilities(self, X, random_state):
        if self.init_params in ("kmeans", "k-means++"):
            # scikit-learn's k-means runs on the host: one copy of X per initialisation
            host = to_numpy(X)
        else:
            host = _host_stand_in(X)  # the random initialisations read only shape and dtype
        return super()._initial_responsibilities(host, random_state)

    def _device_samples(self, X, reset):
        """X as a 2-D float CuPy array, checked on the device (one host read: all finite?)."""
        if array_api_compat.is_numpy_array(X) or not array_api_compat.is_array_api_obj(X):
            X = to_device(np.asarray(X), dtype=np.float32)
        xp = get_array_module(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
        if X.dtype not in (xp.float32, xp.float64):
            raise TypeError(f"X must be float32 or float64 on the GPU, got {X.dtype}")
        if X.shape[0] < 2 or X.shape[1] < 1:
            raise ValueError(f"X needs at least 2 samples and 1 feature, got {tuple(X.shape)}")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but this mixture was fitted with "
                f"{self.n_features_in_}"
            )
        if not bool(xp.all(xp.isfinite(X))):
            raise ValueError("X contains NaN or infinity")
        return X


def _host_stand_in(X):
    """A NumPy array with X's shape and dtype that costs no copy (one broadcast scalar).

    For the parent's host-side steps that read only ``X.shape`` and ``X.dtype`` as NumPy
    sees them.
    """
    dtype = to_numpy(X[:1, :1]).dtype  # CuPy dtypes are NumPy's already; strict ones are not
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(X.shape))
