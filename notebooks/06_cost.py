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
# # 6. Cost: EM attention against the non-local block
#
# The reason EMANet exists: the non-local block lets every one of the $N = HW$ pixels attend
# to every other, which costs $O(N^2 C)$ time and an $N \times N$ attention matrix of memory;
# EM attention lets every pixel attend to $K$ bases, $O(NKC)$ per iteration, with $K$ fixed
# (64 in the paper). This notebook measures both over feature-map sizes (time, FLOPs and
# memory), sets the measurements against the two complexities and fits the exponents they
# actually follow. Three exercises close it.
#
# The sizes are kept small so that the notebook runs in seconds on a laptop CPU; the
# benchmarks in `benchmarks/` measure the paper's sizes ($C = 512$, $65 \times 65$ and
# $97 \times 97$).

# %%
import time
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from em_tutorial import ema, non_local
from em_tutorial.ema import em_attention_flops
from em_tutorial.nn import EMAU, NonLocal2d
from em_tutorial.non_local import non_local_flops

torch.manual_seed(0)
torch.set_num_threads(1)  # compare work, not parallel speed-up; one thread also times steadier
rng = np.random.default_rng(0)

C, K, T = 128, 64, 3  # channels, bases, EM iterations
C_inner = C // 2  # C', the channels of the non-local block's embeddings (NonLocal2d's default)
sides = (12, 16, 24, 32, 48, 64)  # feature maps from 12 x 12 to 64 x 64
Ns = np.array([s * s for s in sides])

# %% [markdown]
# ## How the work grows
#
# Count the FLOPs of the attention itself (the $1\times1$ convolutions around it cost
# $O(NC^2)$ in both blocks and grow only linearly in $N$):
#
# - EM attention, per iteration: A$_E$ is the product $X\mu^\top$, $(N \times C)(C \times K)$,
#   $2NKC$ FLOPs; A$_M$ is $Z^\top X$, another $2NKC$. With A$_R$ ($Z\mu$, $2NKC$) after $T$
#   iterations: $(4T + 2)\,NKC$.
# - The non-local block with embeddings of $C' = C/2$ channels: $\theta\phi^\top$ is
#   $(N \times C')(C' \times N)$, $2N^2C'$ FLOPs, and the attention times $g$ another
#   $2N^2C'$: $4N^2C'$.
#
# The package writes both counts: `ema.em_attention_flops(N, K, C, T)` and
# `non_local.non_local_flops(N, C')`. The two are equal at $N^* = (4T+2)KC / (4C')$: below it
# the non-local block is the cheaper one, above it EM attention wins by a factor that grows
# like $N$.

# %%
# N* by the formula above; the package's two counts meet there
crossover = (4 * T + 2) * K * C / (4 * C_inner)
assert em_attention_flops(int(crossover), K, C, T) == non_local_flops(int(crossover), C_inner)
side_star = np.sqrt(crossover)
print(f"equal cost at N* = {crossover:.0f} pixels, about {side_star:.0f} x {side_star:.0f}")
for side in (65, 97):
    n = side * side
    ratio = non_local_flops(n, C_inner) / em_attention_flops(n, K, C, T)
    print(f"{side} x {side}: non-local / EM attention = {ratio:.0f}x the FLOPs")

# %% [markdown]
# ## Measured: time and FLOPs of the two blocks
#
# The PyTorch modules `EMAU` (notebook 4) and `NonLocal2d` (`em_tutorial.nn`), on one feature
# map in evaluation mode without gradients. PyTorch's `FlopCounterMode` counts the FLOPs of
# every matrix product and convolution the forward pass actually runs (element-wise work such
# as the softmax is not counted). Each time is the **median** of at least seven runs (and
# of enough runs to fill 0.2 s), with the **interquartile range** of the runs (their 25th to
# 75th percentile) kept for the error bands: on a shared machine single runs jump, the median
# of many does not.

# %%
def timed_runs(function, min_repeats=7, min_total=0.2):
    """Seconds of repeated runs after a warm-up: at least min_repeats, and min_total in all."""
    function()  # warm-up
    times = []
    while len(times) < min_repeats or sum(times) < min_total:
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return np.array(times)


def counted_flops(module, x):
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


blocks = {"EMAU": EMAU(C, num_bases=K, num_stages=T).eval(), "NonLocal2d": NonLocal2d(C).eval()}
seconds = {name: [] for name in blocks}  # medians
quartiles = {name: [] for name in blocks}  # (25 %, 75 %) of the runs
flops = {name: [] for name in blocks}
with torch.no_grad():
    for side in sides:
        x = torch.randn(1, C, side, side)  # (B, C, H, W)
        for name, block in blocks.items():
            runs = timed_runs(lambda: block(x))
            seconds[name].append(float(np.median(runs)))
            quartiles[name].append(np.percentile(runs, [25, 75]))
            flops[name].append(counted_flops(block, x))

print(f"{'map':>7s} {'N':>6s} | {'EMAU ms':>8s} {'NonLocal ms':>11s} | "
      f"{'EMAU MFLOP':>10s} {'NonLocal MFLOP':>14s}")
for i, side in enumerate(sides):
    print(f"{side:>3d}x{side:<3d} {Ns[i]:>6d} | "
          f"{1e3 * seconds['EMAU'][i]:>8.2f} {1e3 * seconds['NonLocal2d'][i]:>11.2f} | "
          f"{flops['EMAU'][i] / 1e6:>10.1f} {flops['NonLocal2d'][i] / 1e6:>14.1f}")

# %% [markdown]
# ## Measured: memory
#
# Memory is easiest to see on the NumPy stage, whose allocations Python's `tracemalloc`
# records: the peak of extra memory while `em_tutorial.ema.em_attention` and
# `em_tutorial.non_local.non_local` run on the same float32 features. EM attention holds
# the $N \times K$ responsibilities; the non-local operation the $N \times N$ attention
# matrix.

# %%
def peak_bytes(function):
    tracemalloc.start()
    tracemalloc.reset_peak()
    function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


memory = {"EM attention": [], "non-local": []}
bases = ema.l2_normalize(rng.standard_normal((K, C)).astype(np.float32))  # (K, C)
for n in Ns:
    features = rng.standard_normal((n, C)).astype(np.float32)  # (N, C)
    memory["EM attention"].append(peak_bytes(lambda: ema.em_attention(features, bases, n_iter=T)))
    memory["non-local"].append(peak_bytes(lambda: non_local.non_local(features)))

for i, n in enumerate(Ns):
    print(f"N = {n:5d}: EM attention {memory['EM attention'][i] / 2**20:6.2f} MiB, "
          f"non-local {memory['non-local'][i] / 2**20:7.2f} MiB   "
          f"(N x N float32: {4 * n * n / 2**20:6.2f} MiB)")
print(f"the paper's 97 x 97 map: N x N float32 is {4 * (97 * 97) ** 2 / 2**20:.0f} MiB per image")

# %% [markdown]
# ## Against the complexities
#
# On log-log axes a cost proportional to $N$ is a line of slope 1 and one proportional to
# $N^2$ a line of slope 2. The dashed lines are $c \cdot N$ and $c \cdot N^2$ through the
# largest measurement of each block: the slopes are the lesson. In the FLOPs panel the
# dotted lines are the attention formulas above, without the convolutions.

# %%
def reference(values, power):
    """c * N**power through the last (largest) measurement."""
    return values[-1] * (Ns / Ns[-1]) ** power


fig, axes = plt.subplots(1, 3, figsize=(15, 4))
panels = (
    ("time (s), median of runs", seconds, ("EMAU", "NonLocal2d")),
    ("FLOPs (counted)", flops, ("EMAU", "NonLocal2d")),
    ("peak extra memory (bytes)", memory, ("EM attention", "non-local")),
)
for ax, (label, measured, (linear_name, quadratic_name)) in zip(axes, panels):
    for name, power, colour in ((linear_name, 1, "tab:blue"), (quadratic_name, 2, "tab:orange")):
        values = np.asarray(measured[name], dtype=float)
        ax.loglog(Ns, values, "o-", color=colour, label=name)
        ax.loglog(Ns, reference(values, power), "--", color=colour, alpha=0.6,
                  label=f"$\\propto N^{power}$")
        if measured is seconds:  # the middle half of the runs
            spread = np.array(quartiles[name])  # (sizes, 2)
            ax.fill_between(Ns, spread[:, 0], spread[:, 1], color=colour, alpha=0.25)
    ax.set(xlabel="feature map (N = H W pixels)", ylabel=label)
axes[1].loglog(Ns, [em_attention_flops(n, K, C, T) for n in Ns], ":", color="tab:blue",
               label="$(4T+2)NKC$")
axes[1].loglog(Ns, [non_local_flops(n, C_inner) for n in Ns], ":", color="tab:orange",
               label="$4N^2C'$")
for ax in axes:
    ax.set_xticks(Ns, [f"{side}x{side}" for side in sides])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.legend()
fig.suptitle(f"C = {C}, K = {K}, T = {T}, batch 1", y=1.02)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The slopes, fitted
#
# A straight line fitted to $\ln(\text{cost})$ against $\ln N$ gives the exponent the
# measurements actually follow. It is fitted over the four largest maps ($24\times24$ to
# $64\times64$), where fixed overheads no longer dominate. The FLOPs column, the yardstick for
# the time column, is the counted FLOPs' exponent over the same range: an average over four
# sizes, since a cost with terms in both $N$ and $N^2$ is not a power law. The non-local
# block's is a little under 2 there because its $O(NC^2)$ convolutions still count.

# %%
FITTED = Ns >= 24 * 24


def fitted_slope(values):
    """The exponent p of cost ~ c N^p, least squares on the log-log points of FITTED."""
    return float(np.polyfit(np.log(Ns[FITTED]), np.log(np.asarray(values, float)[FITTED]), 1)[0])


slopes = {}
print(f"fitted over N = {Ns[FITTED][0]} .. {Ns[FITTED][-1]}")
print(f"{'block':12s} {'time':>6s} {'FLOPs':>6s} {'memory':>7s}   complexity of the attention")
for block, array_name, complexity in (("EMAU", "EM attention", "O(NKC):  slope 1"),
                                      ("NonLocal2d", "non-local", "O(N^2 C): slope 2")):
    slopes[block] = [fitted_slope(seconds[block]), fitted_slope(flops[block]),
                     fitted_slope(memory[array_name])]
    print(f"{block:12s} {slopes[block][0]:6.2f} {slopes[block][1]:6.2f} {slopes[block][2]:7.2f}"
          f"   {complexity}")

# %% [markdown]
# What the figure shows:
#
# - **FLOPs** follow the formulas closely: the EMAU's grow like $N$, the non-local block's
#   like $N^2$ once $N$ passes a few hundred pixels (below that its $O(NC^2)$ convolutions
#   dominate). The curves cross near the $N^*$ computed above.
# - **Time** follows FLOPs at the larger sizes (compare the fitted time and FLOPs slopes); at
#   the smallest ones fixed per-call overheads flatten both curves, which is why small
#   benchmarks say little about complexity. The shaded bands are the interquartile range of
#   the runs: narrow where the machine was quiet; where they are wide, it was busy, and only
#   the median is worth reading. Once the $N \times N$ matrix no longer fits in the CPU's
#   caches, the non-local block's time can grow even faster than its FLOPs.
# - **Memory** of the non-local operation is the $N \times N$ matrix: the last line of the
#   memory table, for a single image at $64 \times 64$, and the line under it at the paper's
#   $97 \times 97$. That is for inference; in training autograd keeps the matrix for the
#   backward pass, which also creates an $N \times N$ gradient of the same size. EM
#   attention's $N \times K$ responsibilities grow only linearly.
#
# Extrapolating along the two slopes to EMANet's setting ($97 \times 97$, $C = 512$, batch
# 16 during training) is what makes the non-local block impractical there and EM attention
# cheap; `benchmarks/bench_nn.py` and `benchmarks/bench_ema.py` measure those sizes directly.

# %% [markdown]
# ## Exercises
#
# Each exercise leaves an answer set to `None`. Replace it and run the hidden cell after it
# (click the "..." to see its code): it says *not yet* while the answer is `None`, *right* or
# *not right* once there is one.
#
# **Exercise 1: predict the cost at $N = 256^2$.** A $256\times256$ feature map is what an
# image of about 2000 pixels across gives at output stride 8. With this notebook's $C$, $K$
# and $T$, by what factor does the non-local attention need more FLOPs than EM attention
# there? Use the two formulas, not a measurement, and give the factor to three significant
# digits.

# %% tags=["exercise"]
flop_ratio_256 = None  # your answer here: a number

# %% tags=["check"] jupyter={"source_hidden": true}
from exercises import check

check("Exercise 1", flop_ratio_256,
      non_local_flops(256**2, C_inner) / em_attention_flops(256**2, K, C, T),
      "write both FLOP counts for a general N first: which power of N is left in their "
      "ratio? Then put in N = 256**2 and this notebook's C, K and T.",
      rtol=3.5e-3)  # rounded to three significant digits passes; one unit off in the third fails

# %% [markdown]
# **Exercise 2: the memory wall.** How many GiB does one float32 $N \times N$ attention matrix
# take at $N = 256^2$, and how many GiB the $N \times K$ responsibilities of EM attention?
# A GiB is $2^{30}$ bytes (not $10^9$). Give both, as a pair, to three significant digits.

# %% tags=["exercise"]
gib_256 = None  # your answer here: (non-local GiB, EM attention GiB)

# %% tags=["check"] jupyter={"source_hidden": true}
check("Exercise 2", gib_256, (4 * (256**2) ** 2 / 2**30, 4 * 256**2 * K / 2**30),
      "count the entries of each matrix first, then the bytes each entry takes.",
      rtol=3.5e-3)  # as in exercise 1

# %% [markdown]
# **Exercise 3: predict, then measure.** The fitted time slope $p$ of a block says how its
# time grows, $t \approx c\, N^p$. Predict each block's time on a $96 \times 96$ map from its
# median time at $64 \times 64$ (the last of `seconds[name]`) and its time slope
# (`slopes[name][0]`). Then measure it: time each block of `blocks` on a
# $(1, C, 96, 96)$ input with `timed_runs` under `torch.no_grad()`, and take the median, as
# the notebook did above. Give both as (EMAU, NonLocal2d) pairs, in seconds. Which
# prediction comes closer, and why might the other miss? The check compares your prediction
# with the formula, not with a timing, and your measurement with one it makes itself,
# within a factor of 2 either way (timings on a shared machine vary).

# %% tags=["exercise"]
predicted_96 = None  # your answer here: (EMAU s, NonLocal2d s) from the slopes
measured_96 = None  # your answer here: (EMAU s, NonLocal2d s), medians of timed_runs

# %% tags=["check"] jupyter={"source_hidden": true}
_names = ("EMAU", "NonLocal2d")
# t(96 x 96) = t(64 x 64) * (N_96 / N_64)^p, p the fitted time slope
_predicted = [seconds[name][-1] * (96 * 96 / Ns[-1]) ** slopes[name][0] for name in _names]
check("Exercise 3, prediction", predicted_96, _predicted,
      "t ~ c N^p, so a ratio of two times is the ratio of their N raised to p; N counts the "
      "pixels, not the side of the map.", rtol=1e-3)
_measured = None
if measured_96 is not None:  # time the blocks only once there is a measurement to compare
    _map_96 = torch.randn(1, C, 96, 96)  # (B, C, H, W)
    with torch.no_grad():
        _measured = [float(np.median(timed_runs(lambda: blocks[name](_map_96))))
                     for name in _names]
check("Exercise 3, measurement", measured_96, _measured,
      "time block(x) with timed_runs for each block in `blocks`, on x of shape (1, C, 96, 96), "
      "inside torch.no_grad(), and give the two medians in seconds, EMAU first.",
      rtol=1.0, atol=0.0,  # at most twice the check's own time ...
      validate=lambda answer: None if np.all(np.asarray(answer, float) >= np.array(_measured) / 2)
      else "a time is less than half of what the check measured just now")  # ... at least half
