"""Stage 2: the same maths on the GPU with CuPy.

Two lessons side by side:

1. **The drop-in port.** Every function of :mod:`em_tutorial.gmm` and :mod:`em_tutorial.ema`
   takes CuPy arrays unchanged (the ``xp`` idiom), and its results stay on the GPU::

       from em_tutorial import ema, gpu
       x, mu = gpu.to_gpu(x, mu)                  # float32 on the device
       z, mu, x_tilde = ema.em_attention(x, mu)   # the plain CuPy version

   :class:`em_tutorial.gmm.GaussianMixture` fits CuPy arrays on the device under
   scikit-learn's array-API dispatch; :class:`GaussianMixtureGPU` is a convenience that
   does the same without setting dispatch up.

2. **Making it fast.** :func:`em_attention_fused` computes the same numbers with two fused
   kernels per iteration instead of a dozen element-wise passes over the N x K matrix
   (:mod:`em_tutorial.gpu.fused_ema` explains the count).

Importing this module does not need a GPU; calling the kernels does.
"""

from em_tutorial.backend import gpu_available, gpu_unavailable_reason, to_device, to_numpy
from em_tutorial.ema import em_attention as em_attention_plain
from em_tutorial.gpu.fused_ema import (
    em_attention_fused,
    fused_attention_e_step,
    fused_attention_m_step,
)
from em_tutorial.gpu.mixture import GaussianMixtureGPU

__all__ = [
    "gpu_available",
    "gpu_unavailable_reason",
    "to_gpu",
    "to_numpy",
    "em_attention_plain",
    "em_attention_fused",
    "fused_attention_e_step",
    "fused_attention_m_step",
    "GaussianMixtureGPU",
]


def to_gpu(*arrays, dtype="float32"):
    """Copy host arrays to the GPU, as float32 by default (the GPU stage's precision).

    Parameters
    ----------
    *arrays : array_like
    dtype : dtype or None
        ``None`` keeps each array's dtype (e.g. float64 for the equivalence tests).

    Returns
    -------
    cupy.ndarray, or a tuple of them when several arrays are given.

    Raises
    ------
    RuntimeError
        If no GPU is visible (see :func:`em_tutorial.backend.to_device`).
    """
    moved = tuple(to_device(a, dtype=dtype) for a in arrays)
    return moved[0] if len(moved) == 1 else moved
