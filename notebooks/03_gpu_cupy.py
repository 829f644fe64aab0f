# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. To the GPU with CuPy
#
# Two lessons. First, the NumPy code of notebooks 1 and 2 runs on a GPU *unchanged*: hand it
# CuPy arrays and the same lines execute there. Second, "runs on the GPU" is not "fast on the
# GPU": between its matrix products, EM attention is a chain of small element-wise steps,
# each a separate pass over memory, and fusing them into custom kernels is where the time is.
#
# Cells that need a GPU carry the tag `gpu` and check `gpu_available()` first; on a machine
# without one they say so and move on, and the last section shows the GPU figures recorded in
# `benchmarks/RESULTS.md` instead.

# %%
import inspect
from pathlib import Path

import array_api_strict
import numpy as np
from IPython.display import Markdown, display

from em_tutorial import backend, ema, gmm, gpu
from em_tutorial.gpu import fused_ema, kernels

rng = np.random.default_rng(0)
print("GPU available:", backend.gpu_available())

# %% [markdown]
# ## One code path: the `xp` idiom
#
# Every numerical function in the package starts by asking its arguments which array library
# they belong to, and then calls that library's functions by the names the
# [Python array API standard](https://data-apis.org/array-api/) gives them (`xp.matmul`,
# `xp.exp`, `xp.sum(..., axis=)`, ...). NumPy arrays get NumPy, CuPy arrays get CuPy:

# %%
print(inspect.getsource(backend.get_array_module))

# %% [markdown]
# A$_E$ of EM attention, for instance, never names NumPy:

# %%
print(inspect.getsource(ema.attention_e_step))
print(inspect.getsource(ema.softmax))

# %% [markdown]
# How do we know no NumPy-only call slipped in, on a machine without a GPU?
# `array_api_strict` is a CPU library that implements the standard and *nothing else*:
# any call CuPy might not have fails there. The whole EM attention runs on its arrays and
# gives NumPy's numbers.

# %%
x = rng.standard_normal((2, 400, 32))  # (B, N, C)
mu = ema.l2_normalize(rng.standard_normal((8, 32)))  # (K, C)

z_numpy, mu_numpy, x_tilde_numpy = ema.em_attention(x, mu)
z_strict, mu_strict, x_tilde_strict = ema.em_attention(array_api_strict.asarray(x),
                                                       array_api_strict.asarray(mu))
print(type(z_strict).__module__, "arrays; largest difference to NumPy:",
      max(np.max(np.abs(np.asarray(a) - b)) for a, b in
          ((z_strict, z_numpy), (mu_strict, mu_numpy), (x_tilde_strict, x_tilde_numpy))))

# %% [markdown]
# Mixing libraries is refused with a message that says what to do, rather than copying
# between host and device behind the user's back on every call:

# %%
try:
    backend.get_array_module(x, array_api_strict.asarray(mu))
except TypeError as error:
    print("TypeError:", error)

# %% [markdown]
# ## The port, and the check that the numbers are equal
#
# On a GPU the drop-in port is two lines: move the arrays, call the same function. The
# results stay on the device; `to_numpy` brings them back. In float64 the GPU agrees with
# NumPy to rounding; in float32 (the GPU stage's default) to about $10^{-6}$ relative.

# %% tags=["gpu"]
if backend.gpu_available():
    for dtype in ("float64", "float32"):
        x_gpu, mu_gpu = gpu.to_gpu(x, mu, dtype=dtype)
        z_gpu, mu_out_gpu, x_tilde_gpu = ema.em_attention(x_gpu, mu_gpu)
        print(f"{dtype}: result type {type(z_gpu).__module__}.{type(z_gpu).__name__}; "
              "largest difference to NumPy float64:",
              max(np.max(np.abs(backend.to_numpy(a) - b)) for a, b in
                  ((z_gpu, z_numpy), (mu_out_gpu, mu_numpy), (x_tilde_gpu, x_tilde_numpy))))
else:
    print("No GPU here: cell skipped.")

# %% [markdown]
# ## A float32 pitfall
#
# GPUs are fast in float32, and float32 keeps about seven significant digits. A variance
# computed as $\mathbb{E}[x^2] - \mu^2$ subtracts two large, nearly equal numbers and can
# lose all of them, even turning negative (scikit-learn issue 30382). The mixture's M-step
# centres the data before squaring, $\frac{1}{N_k}\sum_n z_{nk}(x_n - \mu_k)^2$, which keeps
# the digits. The same trap on the CPU, with values around $10^4$ and a true variance near 1:

# %%
offset_data = (1e4 + rng.standard_normal((1000, 1))).astype(np.float32)  # (N, 1)
naive = np.mean(offset_data**2) - np.mean(offset_data) ** 2
_, _, variance = gmm.m_step(offset_data, np.ones((1000, 1), np.float32), "diag", reg_covar=0.0)
print(f"float64 reference:        {offset_data.astype(np.float64).var():.6f}")
print(f"float32, E[x^2] - mu^2:   {naive:.6f}")
print(f"float32, gmm.m_step:      {variance[0, 0]:.6f}")

# %% [markdown]
# ## Making it fast: the fused kernel
#
# The plain CuPy version launches one kernel per array operation. Between the two matrix
# products of an iteration, the $(B, N, K)$ responsibility matrix is read and written again
# and again: scale by $\lambda$, row maximum, subtract, exponentiate, row sum, divide, column
# sum, divide by $\epsilon + N_k$. The fused version does all of that in one kernel that holds
# each row in registers, and folds the A$_M$ normalisation and the L2 norm into a second
# kernel on the small $(K, C)$ matrix:

# %%
print(fused_ema.__doc__)

# %% [markdown]
# The first kernel, one warp per row $n$: the maximum and the sum of the softmax are warp
# reductions, and each lane adds its $z_{nk}$ to per-warp column sums in shared memory, which
# is $N_k = \sum_n z_{nk}$ computed without another pass over $Z$.

# %%
source = kernels.CUDA_SOURCE
start = source.rfind("template", 0, source.index("__global__ void ema_softmax_colsum"))
print(source[start : source.index("\n}\n", start) + 2])  # up to the kernel's closing brace

# %% [markdown]
# The Python side launches it between the two matrix products, which stay with cuBLAS:

# %%
print(inspect.getsource(fused_ema._fused_iterations))

# %% [markdown]
# Same numbers as the plain port (and so as NumPy):

# %% tags=["gpu"]
if backend.gpu_available():
    x_gpu, mu_gpu = gpu.to_gpu(x, mu)  # float32
    plain = ema.em_attention(x_gpu, mu_gpu)
    fused = gpu.em_attention_fused(x_gpu, mu_gpu)
    for name, a, b in zip(("z", "mu", "x_tilde"), fused, plain):
        a, b = backend.to_numpy(a), backend.to_numpy(b)
        print(f"{name:8s} fused vs plain, largest relative difference "
              f"{np.max(np.abs(a - b)) / np.max(np.abs(b)):.1e}")
else:
    print("No GPU here: cell skipped.")

# %% [markdown]
# ## Timing
#
# EMANet's feature map: a 769-pixel crop at output stride 8 is $97 \times 97$, so
# $N = 9409$, with $C = 512$ channels, $K = 64$ bases and $T = 3$ iterations, float32.
# `cupyx.profiler.benchmark` times GPU work correctly (with CUDA events, after a warm-up);
# the CPU column is NumPy on this machine.

# %% tags=["gpu"]
if backend.gpu_available():
    import time

    from cupyx.profiler import benchmark

    B, N, C, K = 4, 97 * 97, 512, 64
    x_big = rng.standard_normal((B, N, C), dtype=np.float32)
    mu_big = ema.l2_normalize(rng.standard_normal((K, C), dtype=np.float32))
    x_big_gpu, mu_big_gpu = gpu.to_gpu(x_big, mu_big)

    start = time.perf_counter()
    ema.em_attention(x_big, mu_big)
    seconds = {"NumPy (CPU)": time.perf_counter() - start}
    for name, function in (("plain CuPy", ema.em_attention), ("fused", gpu.em_attention_fused)):
        result = benchmark(function, (x_big_gpu, mu_big_gpu), n_repeat=20, n_warmup=3)
        seconds[name] = float(np.median(result.gpu_times[0]))
    flops = (4 * 3 + 2) * B * N * K * C  # two (N, K, C) products per iteration + A_R
    print(f"B={B}, N={N}, C={C}, K={K}, T=3, float32")
    for name, s in seconds.items():
        print(f"{name:12s} {1e3 * s:9.2f} ms  {flops / s / 1e9:8.1f} GFLOP/s  "
              f"x{seconds['NumPy (CPU)'] / s:7.1f} vs NumPy")
else:
    print("No GPU here: cell skipped.")

# %% [markdown]
# ## Recorded GPU results
#
# The benchmark `benchmarks/bench_gpu.py` (run by `scripts/gpu_check.sh`) measures the
# paper-sized case ($B = 16$) and the Gaussian-mixture fit against scikit-learn, beside the
# GPU's own matmul rate and memory bandwidth. What it printed last time on a GPU is kept in
# `benchmarks/RESULTS.md`:

# %%
repository = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "benchmarks").is_dir())
results = (repository / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
start = results.find("## GPU")
end = results.find("\n## ", start + 1)
if start == -1:  # no GPU section: show the whole page
    display(Markdown(results))
else:
    display(Markdown(results[start:] if end == -1 else results[start:end]))
