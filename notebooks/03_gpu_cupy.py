# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Towards the GPU: one code path, and what fusion saves
#
# Two lessons. First, the NumPy code of notebooks 1 and 2 runs on a GPU *unchanged*: hand it
# CuPy arrays and the same lines execute there. Second, "runs on the GPU" is not "fast on the
# GPU": between its matrix products, EM attention is a chain of small element-wise steps,
# each a separate pass over memory, and *fusing* them, so that the data crosses the memory
# bus once instead of many times, is where much of the time goes, on a GPU above all. That
# second lesson is measured here on the CPU, where the same arithmetic of bytes holds; the GPU
# versions follow in cells tagged `gpu`, which run only where a GPU is present.

# %%
import os
import time

import array_api_strict
import matplotlib.pyplot as plt
import numpy as np
import threadpoolctl

from em_tutorial import backend, ema, gmm, gpu

rng = np.random.default_rng(0)
print("GPU available:", backend.gpu_available())

# %% [markdown]
# ## One code path: the `xp` idiom
#
# Every numerical function in the package starts by asking its arguments which array library
# they belong to, `xp = backend.get_array_module(x, mu)`, and then calls that library's
# functions by the names the [Python array API standard](https://data-apis.org/array-api/)
# gives them (`xp.matmul`, `xp.exp`, `xp.sum(..., axis=)`, ...). NumPy arrays get NumPy, CuPy
# arrays get CuPy. A$_E$ written that way, never naming NumPy:

# %%
def attention_e_step_xp(x, mu, lam=1.0):
    """z = softmax_k(lambda x mu^T) on any array library."""
    xp = backend.get_array_module(x, mu)
    logits = lam * xp.matmul(x, xp.matrix_transpose(mu))  # (..., N, C) @ (C, K) -> (..., N, K)
    logits = logits - xp.max(logits, axis=-1, keepdims=True)  # stable: the largest is 0
    e = xp.exp(logits)
    return e / xp.sum(e, axis=-1, keepdims=True)


x = rng.standard_normal((2, 400, 32))  # (B, N, C)
mu = ema.l2_normalize(rng.standard_normal((8, 32)))  # (K, C)
for name, convert in (("numpy", np.asarray), ("array_api_strict", array_api_strict.asarray)):
    z = attention_e_step_xp(convert(x), convert(mu))
    print(f"{name:17s} -> {type(z).__module__}.{type(z).__name__}")
    np.testing.assert_allclose(np.asarray(z), ema.attention_e_step(x, mu), rtol=1e-12)
print("both equal ema.attention_e_step")

# %% [markdown]
# How do we know no NumPy-only call slipped into the package, on a machine without a GPU?
# `array_api_strict` is a CPU library that implements the standard and *nothing else*: any
# call CuPy might not have fails there. The whole of EM attention runs on its arrays and
# gives NumPy's numbers.

# %%
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
# On a GPU the port is two lines: move the arrays, call the same function. The results stay
# on the device; `to_numpy` brings them back. In float64 the GPU agrees with NumPy to
# rounding; in float32 (the GPU stage's default) to about $10^{-6}$ relative.

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
# ## What fusion saves: memory traffic, counted and timed on the CPU
#
# Between the two matrix products of an iteration, EM attention works on the $(B, N, K)$
# matrix of logits and responsibilities: scale by $\lambda$, take each row's maximum,
# subtract it, exponentiate, sum each row, divide, and sum each column for
# $N_k = \sum_n z_{nk}$. Written as array operations, as `ema.softmax` and
# `ema.attention_m_step` are, each step is one pass that reads its inputs from memory and
# writes its result back. Little arithmetic is done per byte, so when the matrix is larger
# than the processor's caches one expects the time to go into moving bytes. Whether it does
# is measured below, and on this CPU the answer is: only in part.
#
# EMANet's feature map during training: a batch of $B = 16$ crops of $97 \times 97$ pixels
# ($N = 9409$) and $K = 64$ bases. In float32 the matrix is 37 MiB, more than the caches of
# most processors. Below, the chain one NumPy operation per step, each step logging the bytes
# it reads and writes:

# %%
B, N, K, lam = 16, 97 * 97, 64, 1.0
logits = rng.standard_normal((B, N, K), dtype=np.float32)  # (B, N, K), as x mu^T leaves it
print(f"logits: {logits.nbytes / 2**20:.1f} MiB")


def unfused_chain(logits, lam, log=None):
    """The element-wise steps of A_E and the counts N_k, one array operation (one pass) each."""
    def step(name, result, *inputs):
        if log is not None:
            log.append((name, sum(a.nbytes for a in inputs), result.nbytes))
        return result

    scaled = step("scale by lambda", lam * logits, logits)
    peak = step("row maximum", scaled.max(axis=-1, keepdims=True), scaled)  # (B, N, 1)
    shifted = step("subtract the maximum", scaled - peak, scaled, peak)
    e = step("exp", np.exp(shifted), shifted)
    total = step("row sum", e.sum(axis=-1, keepdims=True), e)  # (B, N, 1)
    z = step("divide by the sum", e / total, e, total)  # (B, N, K)
    counts = step("column sum N_k", z.sum(axis=-2), z)  # (B, K)
    return z, counts


log = []
z, counts = unfused_chain(logits, lam, log)
np.testing.assert_allclose(z, ema.softmax(lam * logits), rtol=1e-6)
unfused_bytes = sum(read + written for _, read, written in log)
print(f"{'step':22s} {'read MiB':>9s} {'written MiB':>12s}")
for name, read, written in log:
    print(f"{name:22s} {read / 2**20:9.1f} {written / 2**20:12.1f}")
print(f"{'total':22s} {unfused_bytes / 2**20:22.1f} MiB = {unfused_bytes / logits.nbytes:.1f} "
      "passes over the matrix")

# %% [markdown]
# Seven passes read the matrix and four write it: eleven trips over the memory bus for data
# that a single pass could handle. The fused formulation runs *all* the steps on a block of
# rows while that block sits in the cache, then moves on to the next block. The logits are
# read once and $z$ written once: two passes. On the GPU that is one kernel in which each
# warp owns a row (below); on the CPU it is a loop over blocks of rows, each small enough for
# the cache (1024 rows of $K = 64$ float32 are 256 KiB).

# %%
def fused_chain(logits, lam, rows_per_block=1024):
    """The same steps, a block of rows at a time: each block stays in cache through all of them."""
    z = np.empty_like(logits)
    counts = np.zeros(logits.shape[:-2] + logits.shape[-1:], logits.dtype)  # (B, K)
    for b in range(logits.shape[0]):
        for start in range(0, logits.shape[1], rows_per_block):
            rows = slice(start, start + rows_per_block)
            block = z[b, rows]  # a view into z: (rows, K)
            np.multiply(logits[b, rows], lam, out=block)  # the one read of the logits
            block -= block.max(axis=-1, keepdims=True)
            np.exp(block, out=block)
            block /= block.sum(axis=-1, keepdims=True)
            counts[b] += block.sum(axis=0)  # N_k, while the block is still in cache
    return z, counts


z_fused, counts_fused = fused_chain(logits, lam)
np.testing.assert_allclose(z_fused, z, rtol=1e-6)
np.testing.assert_allclose(counts_fused, counts, rtol=1e-4)
fused_bytes = logits.nbytes + z_fused.nbytes  # one read, one write
print(f"fused: same z and N_k; {fused_bytes / 2**20:.1f} MiB moved, "
      f"{unfused_bytes / fused_bytes:.1f}x less than unfused")

# %% [markdown]
# Does the byte count predict the time? Measure how fast this machine moves memory: time
# `np.copyto` of a 64 MiB array into another, and count the bytes it reads plus the bytes it
# writes, 128 MiB per copy, counted as the chains' bytes are. (The hardware may move more: a
# processor usually reads a cache line before writing it.) Then time both chains (medians of
# seven runs: the machine may be shared), and compare the time the fused chain saves with the
# time its saved bytes take at that speed. Expect the two to agree within a factor of about 2,
# not exactly: each unfused step allocates a fresh array as large as the matrix, whose pages
# the operating system maps on first write (page faults the byte count ignores), and the copy
# bandwidth is itself one measurement on a machine that may be busy.

# %%
def median_seconds(function, repeats=7):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


source = np.ones(2**24, dtype=np.float32)  # 64 MiB
target = np.empty_like(source)
bandwidth = 2 * source.nbytes / median_seconds(lambda: np.copyto(target, source))  # bytes / s
seconds = {"unfused": median_seconds(lambda: unfused_chain(logits, lam)),
           "fused": median_seconds(lambda: fused_chain(logits, lam))}
saved = seconds["unfused"] - seconds["fused"]
predicted = (unfused_bytes - fused_bytes) / bandwidth
print(f"copy bandwidth of this machine: {bandwidth / 1e9:.1f} GB/s "
      "(bytes read + bytes written by np.copyto, per second)")
for name, moved in (("unfused", unfused_bytes), ("fused", fused_bytes)):
    print(f"{name:8s} {1e3 * seconds[name]:7.1f} ms; its bytes alone, at copy speed, "
          f"take {1e3 * moved / bandwidth:6.1f} ms")
print(f"time saved by fusing: {1e3 * saved:.1f} ms measured, {1e3 * predicted:.1f} ms predicted "
      f"by the bytes saved (ratio {saved / predicted:.2f})")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
bottom = 0.0
for (name, read, written), colour in zip(log, plt.cm.tab10.colors):
    left.bar("unfused", (read + written) / 2**20, bottom=bottom, color=colour, label=name)
    bottom += (read + written) / 2**20
left.bar("fused", fused_bytes / 2**20, color="grey", label="fused: read once, write once")
left.set(ylabel="MiB moved", title=f"bytes over the memory bus (B={B}, N={N}, K={K})")
left.legend(fontsize=7, loc="upper right")
names = list(seconds)
right.bar(names, [1e3 * seconds[n] for n in names], color="tab:blue", label="measured (median)")
right.scatter(names, [1e3 * b / bandwidth for b in (unfused_bytes, fused_bytes)], color="k",
              marker="_", s=900, zorder=3, label="bytes / copy bandwidth")
right.set(ylabel="ms", title="time of the chain")
right.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The fused chain takes far longer than its bytes need. Where does that time go? Time each
# step on one block of 1024 rows, which stays in the cache, repeated as many times as the
# matrix has blocks: that is the step's share of the fused chain, with no memory traffic in it.
# What the fused chain takes beyond the sum of its steps is printed too: the memory traffic
# and the per-block overheads that the in-cache timing leaves out.

# %%
block_in = logits[0, :1024]  # (1024, K): 256 KiB, in cache
blocks_per_matrix = logits.size / block_in.size
work = {name: np.empty_like(block_in) for name in ("scaled", "shifted", "e", "z")}
peak, total = block_in.max(axis=-1, keepdims=True), np.ones((1024, 1), np.float32)  # (1024, 1)
block_steps = {
    "scale by lambda": lambda: np.multiply(block_in, lam, out=work["scaled"]),
    "row maximum": lambda: np.max(work["scaled"], axis=-1, keepdims=True, out=peak),
    "subtract the maximum": lambda: np.subtract(work["scaled"], peak, out=work["shifted"]),
    "exp": lambda: np.exp(work["shifted"], out=work["e"]),
    "row sum": lambda: np.sum(work["e"], axis=-1, keepdims=True, out=total),
    "divide by the sum": lambda: np.divide(work["e"], total, out=work["z"]),
    "column sum N_k": lambda: work["z"].sum(axis=0),
}
for step_function in block_steps.values():  # fill the buffers once, in the chain's order
    step_function()
# The same work as one flat loop over the block's 65536 numbers, not one loop per row of 64:
# references to set beside the row-wise steps, not steps of the chain.
flat_steps = {
    "subtract a scalar (one flat loop)": lambda: np.subtract(work["scaled"], 0.5,
                                                             out=work["shifted"]),
    "max of the whole block (one flat loop)": lambda: work["scaled"].max(),
}


def repeated(step_function, times=int(blocks_per_matrix)):
    """The step run on the block as many times as the matrix has blocks."""
    def run():
        for _ in range(times):
            step_function()
    return run


def whole_matrix_ms(step_function):
    """Milliseconds the step takes over the whole matrix, timed on the in-cache block."""
    return (1e3 * median_seconds(repeated(step_function)) * blocks_per_matrix
            / int(blocks_per_matrix))


step_ms = {name: whole_matrix_ms(function) for name, function in block_steps.items()}
flat_ms = {name: whole_matrix_ms(function) for name, function in flat_steps.items()}
ranking = sorted(step_ms, key=step_ms.get, reverse=True)
print(f"each step on one in-cache block, scaled to the whole matrix ({blocks_per_matrix:.0f} "
      "blocks):")
for name in ranking:
    print(f"  {name:38s} {step_ms[name]:6.1f} ms")
print(f"  {'sum of the steps':38s} {sum(step_ms.values()):6.1f} ms; the fused chain took "
      f"{1e3 * seconds['fused']:.1f} ms, its bytes alone {1e3 * fused_bytes / bandwidth:.1f} ms")
print(f"  {'the fused chain minus the sum':38s} "
      f"{1e3 * seconds['fused'] - sum(step_ms.values()):6.1f} ms: what the in-cache timing "
      "leaves out (the traffic to and from memory, per-block overheads)")
print(f"largest step: {ranking[0]} ({step_ms[ranking[0]] / sum(step_ms.values()):.0%} of the "
      f"sum); the exp: {step_ms['exp'] / sum(step_ms.values()):.0%}")
print("the same work as one flat loop, for reference:")
for name in flat_ms:
    print(f"  {name:38s} {flat_ms[name]:6.1f} ms")
print(f"subtracting the (rows, 1) maximum takes "
      f"{step_ms['subtract the maximum'] / flat_ms['subtract a scalar (one flat loop)']:.1f}x "
      f"as long as subtracting a scalar; the row maximum "
      f"{step_ms['row maximum'] / flat_ms['max of the whole block (one flat loop)']:.1f}x "
      "as long as the block's maximum")

# %%
fig, ax = plt.subplots(figsize=(8, 3.4))
ax.barh(ranking[::-1], [step_ms[name] for name in ranking[::-1]], color="tab:blue")
ax.axvline(1e3 * seconds["fused"], color="tab:red", label="fused chain, measured")
ax.axvline(1e3 * fused_bytes / bandwidth, color="k", linestyle="--",
           label="fused chain's bytes / copy bandwidth")
ax.set(xlabel="ms over the whole matrix", title="where the fused chain's time goes, step by step")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read the result on the machine that ran this notebook (the numbers change with the
# machine and with whatever else runs on it, so the cells print their own):
#
# - the black marks are the time the bytes alone need at copy speed: a floor no
#   implementation of that formulation can beat. The unfused chain's floor is several times
#   the fused one's;
# - the fused chain's time sits far above its floor. What is left is not memory. Every step
#   that works row by row (the three reductions, and the subtraction and division that
#   broadcast a $(\text{rows}, 1)$ column) runs NumPy's inner loop once per row of only
#   $K = 64$ numbers; the same work as one flat loop over the block is faster by the two
#   ratios printed above. A fused kernel does all of a row's steps in one loop. The
#   exponentials add their share; the chart ranks the steps, largest first;
# - the time saved is of the order of the bytes saved divided by the bandwidth: what fusion
#   removes is memory traffic. When the matrix fits in the cache (try `B = 1`), the unfused
#   chain's extra passes are cheap and the gain shrinks.
#
# ## The same lesson on a GPU
#
# How much faster does a GPU move memory, and does that change the lesson? The cell below
# puts the copy bandwidth measured above beside the peak figures NVIDIA's datasheet gives for
# an H100 (SXM version, HBM3 memory), and beside the float32 arithmetic rate of each: this
# machine's measured on a matrix product, the H100's again from the datasheet (without tensor
# cores). A measured rate set against a peak one flatters the GPU somewhat: a copy on an H100
# reaches a good part of its peak, not all of it.
#
# The ratio of the two rates, in operations per byte, says how much arithmetic a step must do
# on each byte it moves before the arithmetic, rather than the memory, sets its time. The
# chain above does at least one operation per element and step (a multiplication, a
# comparison, a subtraction, an exponential, an addition, a division, an addition), that is
# `len(log)` operations for every 8 bytes of the fused version. That count is a lower bound:
# an exponential is tens of instructions, not one. And the arithmetic rate is the rate of a
# matrix product, which BLAS keeps in the processor's vector units; NumPy's element-wise
# steps and short reductions run far below it, as the last line of the cell measures.

# %%
# Peak figures of the H100 SXM, from NVIDIA's H100 datasheet: HBM3 bandwidth, and float32
# arithmetic without tensor cores.
H100_SXM_BYTES_PER_S = 3.35e12
H100_SXM_FLOAT32_PER_S = 67e12

square = rng.standard_normal((1024, 1024), dtype=np.float32)
with threadpoolctl.threadpool_limits(limits=1):  # one core, as np.copyto's bandwidth is
    cpu_flops = 2 * 1024**3 / median_seconds(lambda: square @ square)  # (n, n) @ (n, n): 2 n^3
chain_ops_per_byte = len(log) * logits.size / fused_bytes  # one operation per element and step

print(f"{'':30s} {'memory GB/s':>12s} {'float32 GFLOP/s':>16s} {'FLOP per byte':>14s}")
for machine, bytes_per_s, flops in (("this CPU, one core (measured)", bandwidth, cpu_flops),
                                    ("H100 SXM (datasheet peak)", H100_SXM_BYTES_PER_S,
                                     H100_SXM_FLOAT32_PER_S)):
    print(f"{machine:30s} {bytes_per_s / 1e9:12.1f} {flops / 1e9:16.0f} "
          f"{flops / bytes_per_s:14.1f}")
print(f"the H100 moves memory {H100_SXM_BYTES_PER_S / bandwidth:.0f} times faster than one core "
      f"of this CPU copies it, and computes {H100_SXM_FLOAT32_PER_S / cpu_flops:.0f} times faster")
print(f"the fused chain does {chain_ops_per_byte:.2f} operations per byte it moves (at least)")
chain_ops_per_s = len(log) * logits.size / seconds["fused"]
h100_arithmetic_share = chain_ops_per_byte / (H100_SXM_FLOAT32_PER_S / H100_SXM_BYTES_PER_S)
print(f"on the H100, at one operation per element and step, the fused chain's arithmetic "
      f"needs {h100_arithmetic_share:.0%} of its memory time (datasheet rates)")
print(f"this CPU ran the fused chain at {chain_ops_per_s / 1e9:.2f} G operations/s, "
      f"{cpu_flops / chain_ops_per_s:.0f} times below its matrix-product rate")

# %% [markdown]
# The chain's operations per byte sit far below the FLOP per byte of either machine: the
# unfused chain's extra passes cost memory time, so what fusion saves is memory time on both
# machines. On the H100 what remains after fusion is small too: its arithmetic, counted as
# above, is a small share of its memory time, and a GPU's exponential is a few instructions.
# On this CPU, NumPy's element-wise kernels and short reductions run far below the
# matrix-product rate, so what remains there is not memory. On the GPU fusion pays twice,
# because each unfused step is also a separate kernel launch, a few microseconds of fixed
# cost.
#
# ## The fused kernel, in CUDA
#
# The package's fused version does on the GPU what `fused_chain` does above. Its first
# kernel, `ema_softmax_colsum` in `em_tutorial/gpu/kernels.py`, gives one warp (32 threads)
# to each row of $K$ logits. Here is its source, as the package compiles it (the string
# `kernels.CUDA_SOURCE`; reading it needs no GPU), and its launch configuration at
# EMANet's size:

# %%
source_text = gpu.kernels.CUDA_SOURCE
kernel_source = source_text[source_text.index("// logits, z:"):
                            source_text.index("// Reduce v over the whole block")]
print(kernel_source)
blocks, threads, shared_bytes = gpu.fused_ema.softmax_launch_config(16, 97 * 97, 64, np.float32)
print(f"B=16, N={97 * 97}, K=64: a grid of {blocks} x 16 blocks of {threads} threads "
      f"({threads // 32} warps, one row each at a time), {shared_bytes} bytes of shared memory "
      "per block")

# %% [markdown]
# Line by line it is `fused_chain` with a row in place of a block of rows. Inside the loop over
# the rows `n`:
#
# - the first loop over `k` is the row maximum, `warp_max` combining the 32 threads' partial
#   maxima;
# - the second is the softmax denominator, $\sum_k e^{\lambda s_{nk} - \max}$, combined by
#   `warp_sum`;
# - the third writes $z_{nk}$ and adds it to `my_colsum`, the warp's column sums in shared
#   memory: $N_k = \sum_n z_{nk}$ without another pass over $z$;
# - after the rows, each block writes one $(K,)$ vector of partial sums, which the second
#   kernel adds up.
#
# The row's $K$ logits are read three times, but a row of 64 float32 numbers is 256 bytes and
# stays in the cache between the loops: from main memory the logits are read once and $z$ is
# written once, the two passes counted above. The second kernel, `ema_normalize_bases`,
# fuses A$_M$'s division by $N_k$ and the L2 normalisation on the small $(K, C)$ matrix; the
# matrix products stay with cuBLAS.
#
# ## The fused kernels on the GPU
#
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
# Timing at EMANet's size, float32: $B = 4$ feature maps of $97 \times 97$ pixels,
# $C = 512$ channels, $K = 64$ bases, $T = 3$ iterations. `cupyx.profiler.benchmark` times
# GPU work correctly (with CUDA events, after a warm-up); the CPU column is NumPy on the same
# machine.

# %% tags=["gpu"]
if backend.gpu_available():
    from cupyx.profiler import benchmark

    B, N, C, K = 4, 97 * 97, 512, 64
    x_big = rng.standard_normal((B, N, C), dtype=np.float32)
    mu_big = ema.l2_normalize(rng.standard_normal((K, C), dtype=np.float32))
    x_big_gpu, mu_big_gpu = gpu.to_gpu(x_big, mu_big)

    timings = {"NumPy (CPU)": median_seconds(lambda: ema.em_attention(x_big, mu_big), repeats=3)}
    for name, function in (("plain CuPy", ema.em_attention), ("fused", gpu.em_attention_fused)):
        result = benchmark(function, (x_big_gpu, mu_big_gpu), n_repeat=20, n_warmup=3)
        timings[name] = float(np.median(result.gpu_times[0]))
    flops = (4 * 3 + 2) * B * N * K * C  # two (N, K, C) products per iteration + A_R
    print(f"B={B}, N={N}, C={C}, K={K}, T=3, float32")
    for name, s in timings.items():
        print(f"{name:12s} {1e3 * s:9.2f} ms  {flops / s / 1e9:8.1f} GFLOP/s  "
              f"x{timings['NumPy (CPU)'] / s:7.1f} vs NumPy")
else:
    print("No GPU here: cell skipped.")

# %% [markdown]
# ## One estimator for the mixture, on any array library
#
# The Gaussian mixture of notebook 1 follows scikit-learn's array API support: inside
# `sklearn.config_context(array_api_dispatch=True)`, `gmm.GaussianMixture` fits the array it
# is given where it lives, a CuPy array on the GPU, and its fitted attributes stay there.
# The same data fitted on the CPU for comparison:

# %% tags=["gpu"]
if backend.gpu_available():
    import sklearn

    centres = 4 * rng.standard_normal((16, 16))  # (K, d)
    X_mix = (centres[rng.integers(0, 16, 100_000)]
             + rng.standard_normal((100_000, 16))).astype(np.float32)  # (n, d)
    X_gpu = backend.to_device(X_mix)
    settings = {"n_components": 16, "covariance_type": "full", "max_iter": 20, "random_state": 0}
    start = time.perf_counter()
    # One estimator for NumPy, CuPy and torch arrays: array_api_dispatch keeps the fit on the GPU.
    with sklearn.config_context(array_api_dispatch=True):
        on_gpu = gmm.GaussianMixture(**settings).fit(X_gpu)
    gpu_seconds = time.perf_counter() - start
    start = time.perf_counter()
    on_cpu = gmm.GaussianMixture(**settings).fit(X_mix)
    cpu_seconds = time.perf_counter() - start
    print(f"GPU: {gpu_seconds:.2f} s, means_ is a {type(on_gpu.means_).__module__} array, "
          f"lower bound {float(on_gpu.lower_bound_):.4f}")
    print(f"CPU: {cpu_seconds:.2f} s, lower bound {float(on_cpu.lower_bound_):.4f}")
else:
    print("No GPU here: cell skipped.")

# %% [markdown]
# Measured GPU figures, when a GPU has been available to run `benchmarks/bench_gpu.py`
# (through `scripts/gpu_check.sh`), are kept in `benchmarks/RESULTS.md`.
#
# ## Exercises
#
# Each exercise leaves an answer set to `None`. Replace it and run the hidden cell after it
# (click the "..." to see its code): it says *not yet* while the answer is `None`, *right* or
# *not right* once there is one.
#
# **Exercise 1: count the bytes.** Without running anything, write the number of bytes the
# unfused chain moves for a float32 matrix of shape $(B, N, K)$, counting as the log above
# does (the $(B, N, 1)$ row maxima and sums, and the $(B, K)$ counts, included).

# %% tags=["exercise"]
def unfused_bytes_formula(B, N, K):
    """Bytes read plus bytes written by unfused_chain on float32 logits of shape (B, N, K)."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
from exercises import check

_small_log = []
unfused_chain(np.zeros((3, 50, 7), np.float32), 1.0, _small_log)
check("Exercise 1", lambda: unfused_bytes_formula(3, 50, 7),
      sum(r + w for _, r, w in _small_log),
      "go through the table of steps above line by line: which arrays does each step read, "
      "which does it write, and what is the shape of each? A float32 number is 4 bytes.")

# %% [markdown]
# **Exercise 2: a float32 variance that keeps its digits.** Write a function that computes,
# in float32, the variance of `data` as $\mathbb{E}[d^2] - \mathbb{E}[d]^2$ with
# $d = x - \text{shift}$: the formula that failed above, applied to shifted data. It does
# *not* centre on the mean; subtracting any one sample (say the first) as the shift is
# enough to remove the large common offset, so that the call below agrees with the float64
# reference to three digits. The check also calls your function with a shift of 0, where it
# must fail as the formula above does.

# %% tags=["exercise"]
def shifted_variance(data, shift):
    """E[d^2] - E[d]^2 of d = data - shift, in float32; data (N, 1) float32, shift a number."""
    return None  # your answer here


# %% tags=["check"] jupyter={"source_hidden": true}
_reference = offset_data.astype(np.float64).var()


def _follows_the_instruction(value):
    """A float32 result, and the plain formula on shifted data: with shift 0 it loses the digits."""
    if np.asarray(value).dtype != np.float32:
        return f"the result is {np.asarray(value).dtype}, the exercise asks for float32"
    if np.isclose(shifted_variance(offset_data, np.float32(0.0)), _reference, rtol=1e-3):
        return ("with shift = 0 your function still keeps the digits, so it does not compute "
                "E[d^2] - E[d]^2 in float32: it centres on the mean, or works in float64")
    return None


check("Exercise 2", lambda: shifted_variance(offset_data, offset_data[0, 0]), _reference, rtol=1e-3,
      hint="subtracting a constant changes no variance; what matters is that the numbers you "
           "square are no longer near 10^4: their squares, near 10^8, float32 stores only to "
           "the nearest multiple of 8.",
      validate=_follows_the_instruction)
