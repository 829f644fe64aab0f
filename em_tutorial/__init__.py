"""em_tutorial: Expectation-Maximization from its equations to EMANet.

The stages (each tested against the one before):

1. NumPy, any array-API library:
   ``em_tutorial.gmm`` -- Gaussian-mixture EM, equations (3)-(8).
   ``em_tutorial.ema`` -- EM attention, the special case EMANet uses, one function per step;
   ``em_tutorial.ema_fast`` the same numbers faster on NumPy; ``em_tutorial.ema_validation``
   the input rules every EM-attention stage shares.
   ``em_tutorial.non_local`` -- the non-local block (9) that EM attention replaces.
2. ``em_tutorial.gpu`` -- the same maths on the GPU with CuPy, plus fused kernels.
3. ``em_tutorial.nn`` -- the EMA Unit and EMANet in PyTorch.

``em_tutorial.backend`` holds the ``xp`` idiom that lets one code path serve NumPy, CuPy and
the array API. The application that trains and evaluates EMANet on segmentation data is a
user of stage 3 and lives in ``em_tutorial.segmentation``; ``em_tutorial.cli`` (the
``em-tutorial`` command) and ``em_tutorial.tour`` are its entry points.

Submodules are imported on demand. Stage 1 needs only the core dependencies of
``pyproject.toml`` (NumPy, SciPy, scikit-learn, array-api-compat); PyTorch (stage 3 and the
application) and CuPy (stage 2) are optional extras, imported only when they are used:
``import em_tutorial.gpu`` works without CuPy, ``import em_tutorial.nn`` needs PyTorch.
"""

__version__ = "0.1.0"
