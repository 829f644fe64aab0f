"""A convenience for fitting the Gaussian mixture on the GPU without scikit-learn's dispatch.

:class:`em_tutorial.gmm.GaussianMixture` is the one estimator: under
``sklearn.config_context(array_api_dispatch=True)`` (with ``SCIPY_ARRAY_API=1`` set before
SciPy is imported) it fits CuPy arrays on the GPU, as it fits NumPy and PyTorch arrays,
and keeps its fitted attributes there. :class:`GaussianMixtureGPU` is that estimator with
only its input step replaced, for a script that does not want to set up array-API
dispatch: host data is moved to the GPU as float32 (the GPU stage's precision), and device
arrays are checked on the device (one host read per call: are all values finite?).
"""

from __future__ import annotations

import array_api_compat
import numpy as np
from sklearn.utils.validation import check_is_fitted

from em_tutorial.backend import get_array_module, to_device
from em_tutorial.gmm import GaussianMixture

__all__ = ["GaussianMixtureGPU"]


class GaussianMixtureGPU(GaussianMixture):
    """:class:`em_tutorial.gmm.GaussianMixture` with host input moved to the GPU as float32.

    Same parameters, attributes and methods. ``X`` may be a CuPy array (float32 or float64,
    kept as it is), another array-API array (kept in its namespace; this is how the CPU-only
    tests exercise this path), or anything ``numpy.asarray`` takes (moved to the GPU as
    float32). Results come back in X's namespace, as from the parent under dispatch.

    Examples
    --------
    >>> from em_tutorial.gpu import GaussianMixtureGPU, to_gpu      # doctest: +SKIP
    >>> gm = GaussianMixtureGPU(16, init_params="random_from_data").fit(to_gpu(X))  # doctest: +SKIP
    """

    def _fit_samples(self, X):
        return self._device_samples(X, reset=True)

    def _validated(self, X):
        check_is_fitted(self)
        return self._device_samples(X, reset=False)

    def _device_samples(self, X, reset):
        """X as a 2-D float device array, checked on the device (one host read: all finite?)."""
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
