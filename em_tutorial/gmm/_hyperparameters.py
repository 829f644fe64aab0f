"""The check of :class:`GaussianMixture`'s constructor arguments, run at the start of ``fit``
(scikit-learn's convention: ``__init__`` only stores them)."""

from __future__ import annotations

from numbers import Integral, Real

from em_tutorial.gmm._engines import ALGORITHMS
from em_tutorial.gmm._precision import COVARIANCE_TYPES
from em_tutorial.gmm._start import INIT_PARAMS


def check_hyperparameters(mixture):
    """Raise a ValueError that names the first argument of ``mixture`` out of its range."""

    def check(name, ok, expected):
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {getattr(mixture, name)!r}")

    def is_int(value):
        return isinstance(value, Integral) and not isinstance(value, bool)

    def is_real(value):
        return isinstance(value, Real) and not isinstance(value, bool)

    m = mixture
    check("n_components", is_int(m.n_components) and m.n_components >= 1, "an int >= 1")
    check("covariance_type", m.covariance_type in COVARIANCE_TYPES, f"one of {COVARIANCE_TYPES}")
    check("tol", is_real(m.tol) and m.tol >= 0, "a number >= 0")
    check("reg_covar", is_real(m.reg_covar) and m.reg_covar >= 0, "a number >= 0")
    check("max_iter", is_int(m.max_iter) and m.max_iter >= 0, "an int >= 0")
    check("n_init", is_int(m.n_init) and m.n_init >= 1, "an int >= 1")
    check("init_params", m.init_params in INIT_PARAMS, f"one of {INIT_PARAMS}")
    check("verbose_interval", is_int(m.verbose_interval) and m.verbose_interval >= 1,
          "an int >= 1")
    check("algorithm", m.algorithm in ALGORITHMS, f"one of {ALGORITHMS}")
