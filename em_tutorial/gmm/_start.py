"""Where EM starts: the first responsibilities (as scikit-learn draws them) and the first
parameters, in X's array namespace and on X's device.

The random draws and the k-means initialisations run on the host, as in scikit-learn: the
random numbers come from a NumPy ``RandomState``, and for ``"kmeans"`` and ``"k-means++"``
X is copied to the host once per initialisation (a stated round-trip on a GPU). The (N, K)
responsibilities go back to X's device, and everything after that runs there.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus

from em_tutorial.backend import get_array_module
from em_tutorial.gmm._arrays import to_host
from em_tutorial.gmm._validation import check_means_init, check_precisions_init, check_weights_init

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def on_device_of(X, array):
    """A host ``array`` moved to X's namespace and device, in X's dtype."""
    xp = get_array_module(X)
    return xp.asarray(array, dtype=X.dtype, device=array_api_compat.device(X))


def host_dtype(X):
    """X's dtype as NumPy spells it (float32 or float64), without copying X."""
    return np.dtype(str(X.dtype).rsplit(".", 1)[-1])


def checked_inits(X, covariance_type, n_components, weights, means, precisions):
    """``weights_init``, ``means_init``, ``precisions_init`` checked on the host (each may be
    any array), then moved to X's device; ``None`` stays ``None``."""
    n_features, dtype = X.shape[1], host_dtype(X)
    checked = [
        None if weights is None else check_weights_init(to_host(weights), n_components, dtype),
        None if means is None else check_means_init(to_host(means), n_components, n_features,
                                                    dtype),
        None if precisions is None else check_precisions_init(
            to_host(precisions), covariance_type, n_components, n_features, dtype),
    ]
    return tuple(None if value is None else on_device_of(X, value) for value in checked)


def initial_responsibilities(X, n_components, init_params, random_state):
    """z_nk to start from, shape (N, K), drawn as scikit-learn draws them.

    ``"random"``: uniform, normalised per row. ``"kmeans"``: one-hot k-means labels.
    ``"random_from_data"`` and ``"k-means++"``: K chosen points, one component each (the
    other rows are all zero).
    """
    n_samples = X.shape[0]
    if init_params == "random":
        resp = random_state.uniform(size=(n_samples, n_components)).astype(host_dtype(X))
        return on_device_of(X, resp / resp.sum(axis=1, keepdims=True))
    resp = np.zeros((n_samples, n_components), dtype=host_dtype(X))
    if init_params == "random_from_data":
        indices = random_state.choice(n_samples, size=n_components, replace=False)
        resp[indices, np.arange(n_components)] = 1
    elif init_params == "k-means++":
        _, indices = kmeans_plusplus(to_host(X), n_components, random_state=random_state)
        resp[indices, np.arange(n_components)] = 1
    else:  # kmeans
        labels = KMeans(n_clusters=n_components, n_init=1, random_state=random_state).fit(
            to_host(X)).labels_
        resp[np.arange(n_samples), labels] = 1
    return on_device_of(X, resp)
