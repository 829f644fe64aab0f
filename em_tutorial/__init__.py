"""em_tutorial: Expectation-Maximization from its equations to EMANet.

Stages (each tested against the one before):

1. ``em_tutorial.gmm`` -- Gaussian-mixture EM in NumPy, equations (3)-(8).
   ``em_tutorial.ema`` -- EM attention (the special case EMANet uses) and the non-local block.
2. ``em_tutorial.gpu`` -- the same maths on the GPU with CuPy, plus fused kernels.
3. ``em_tutorial.nn`` -- the EMA Unit and EMANet in PyTorch; ``em_tutorial.train`` and the
   ``em-tutorial`` command train and evaluate it.

Submodules are imported on demand, so ``import em_tutorial.gmm`` needs only NumPy and SciPy.
"""

__version__ = "0.1.0"
