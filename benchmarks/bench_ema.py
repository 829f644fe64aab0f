"""CPU benchmark: EM attention against the matrix products it is made of, and the non-local block.

Run ``python benchmarks/bench_ema.py`` (about a minute on 2 cores; ``--no-non-local`` skips the
slow part; ``--ladder`` runs part 3 instead of parts 1 and 2).

What is measured, side by side in one run (NumPy, float32):

1. ``em_attention_fast`` (:mod:`em_tutorial.ema_fast`) at EMANet's feature-map size: B=4,
   N=97x97=9409, C=512, K=64, T=3, beside the plain ``ema.em_attention`` and, in the same
   loop, the same 2T+1 products with plain ``np.matmul`` (same shapes and
   orientations, no softmax or normalisation). FLOPs of both: ``(4T + 2) BNKC`` (two
   (N, C, K) products per iteration, one for the reconstruction). Target: EM attention
   reaches >= 70% of the matmul rate, i.e. the softmax and the normalisations cost at most
   ~43% on top of the products.
2. Time and peak memory of the non-local operation (identity embeddings, so the cheapest
   it can be) at 65x65 and 97x97 pixels, B=1, C=512, beside EM attention's (K=64, T=3) on
   the same input. Peak memory is what ``tracemalloc`` sees NumPy allocate during the call,
   inputs excluded.
3. ``--ladder``: what each trick of :mod:`em_tutorial.ema_fast` buys. The plain
   iterations, then the same with the tricks switched on one after the other in the order of
   that module's docstring (the last rung is the fast path), at the size of part 1. Each
   rung's speed-up is the median over repeats of (time of the rung before / its time), the
   rungs alternating inside each repeat.

Timings are the best of ``--repeats`` runs (the median is printed too); the two sides of each
ratio alternate inside one loop, so a busy machine slows both.
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc

import numpy as np

from em_tutorial.ema import (
    EPS,
    attention_m_step,
    attention_reconstruct,
    em_attention,
    l2_normalize,
    softmax,
)
from em_tutorial.ema_fast import em_attention_fast, softmax_last_axis_inplace
from em_tutorial.non_local import non_local

SHAPE = dict(batch=4, n_points=97 * 97, n_channels=512, n_bases=64, n_iter=3)
TARGET_FRACTION = 0.70
NON_LOCAL_SIDES = (65, 97)


def features_and_bases(rng, batch, n_points, n_channels, n_bases):
    """float32 features of unit scale per channel and EMANet's initial bases.

    EMANet draws mu^(0) from N(0, sqrt(2 / K)) and L2-normalises it.
    """
    x = rng.standard_normal((batch, n_points, n_channels), dtype=np.float32)
    mu = (np.sqrt(2.0 / n_bases) * rng.standard_normal((n_bases, n_channels))).astype(np.float32)
    return x, l2_normalize(mu)


def products_only(x, mu, n_iter):
    """The 2T+1 products of the EM-attention fast path, nothing else."""
    z = np.empty(x.shape[:-1] + (mu.shape[-2],), dtype=x.dtype)  # (B, N, K)
    for _ in range(n_iter):
        np.matmul(x, mu.mT, out=z)  # (B, N, C) @ (C, K) -> (B, N, K)
        mu_t = np.matmul(x.mT, z)  # (B, C, N) @ (B, N, K) -> (B, C, K)
        mu = mu_t.mT  # (B, K, C)
    return np.matmul(z, mu)  # (B, N, K) @ (B, K, C) -> (B, N, C)


def timed(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def side_by_side(funcs, repeats):
    """Seconds of each function, run alternately ``repeats`` times after one warm-up each."""
    for func in funcs.values():
        func()
    seconds = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            seconds[name].append(timed(func))
    return seconds


def peak_bytes(func):
    """Peak NumPy allocation during ``func()`` as seen by tracemalloc, in bytes."""
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_em_attention(rng, repeats):
    batch, n_points, n_channels, n_bases, n_iter = SHAPE.values()
    x, mu = features_and_bases(rng, batch, n_points, n_channels, n_bases)
    flops = (4 * n_iter + 2) * batch * n_points * n_bases * n_channels
    print(f"EM attention, float32, B={batch}, N={n_points}, C={n_channels}, K={n_bases}, "
          f"T={n_iter}: {flops / 1e9:.1f} GFLOP per call")
    seconds = side_by_side(
        {
            "np.matmul, same 2T+1 products": lambda: products_only(x, mu, n_iter),
            "em_attention_fast": lambda: em_attention_fast(x, mu, n_iter),
            "em_attention (plain)": lambda: em_attention(x, mu, n_iter),
        },
        repeats,
    )
    for name, runs in seconds.items():
        print(f"  {name:32s} best {min(runs) * 1e3:7.1f} ms  median {np.median(runs) * 1e3:7.1f} ms"
              f"  {flops / min(runs) / 1e9:6.1f} GFLOP/s")
    matmul = seconds["np.matmul, same 2T+1 products"]
    fast = seconds["em_attention_fast"]
    fraction = min(matmul) / min(fast)
    print(f"  em_attention_fast / matmul rate: {fraction:.0%} (best times), "
          f"{np.median(matmul) / np.median(fast):.0%} (medians)")
    verdict = "PASS" if fraction >= TARGET_FRACTION else "FAIL"
    print(f"TARGET em_attention_fast >= {TARGET_FRACTION:.0%} of the matmul rate: "
          f"{verdict} ({fraction:.0%})")
    return verdict == "PASS"


def bench_non_local(rng, repeats):
    _, _, n_channels, n_bases, n_iter = SHAPE.values()
    print(f"\nNon-local (eq. 9, identity embeddings) vs EM attention (K={n_bases}, T={n_iter}), "
          f"float32, B=1, C={n_channels}")
    print(f"  {'pixels':>13s} {'method':14s} {'best time':>10s} {'peak memory':>12s}")
    for side in NON_LOCAL_SIDES:
        x, mu = features_and_bases(rng, 1, side * side, n_channels, n_bases)
        methods = {
            "non_local": lambda: non_local(x),
            "em_attention": lambda: em_attention_fast(x, mu, n_iter),
        }
        seconds = side_by_side(methods, repeats)
        for name, func in methods.items():
            print(f"  {side:>4d}x{side:<3d}={side * side:<5d} {name:14s} "
                  f"{min(seconds[name]):9.3f}s "
                  f"{peak_bytes(func) / 2**20:9.1f} MiB")


TRICKS = ("A_M divides after the product", "x^T z orientation", "in-place softmax",
          "one buffer for z")


def ladder_rung(x, mu, n_iter, tricks):
    """EM attention's T iterations (lambda = 1) with the first ``tricks`` of :data:`TRICKS` on.

    ``tricks = 0`` is ``ema.em_iterations``, ``len(TRICKS)`` ``ema_fast.em_iterations_fast``.
    Returns the last z (B, N, K) and mu (B, K, C); the reconstruction, the same for every
    rung, is left out so that the peak memory is the loop's own.
    """
    z = np.empty(x.shape[:-1] + (mu.shape[-2],), dtype=x.dtype)  # (B, N, K)
    for _ in range(n_iter):
        if tricks >= 4:
            np.matmul(x, mu.mT, out=z)  # (B, N, C) @ (C, K) -> (B, N, K), into one buffer
        else:
            z = np.matmul(x, mu.mT)  # (B, N, C) @ (C, K) -> (B, N, K), a new array
        z = softmax_last_axis_inplace(z) if tricks >= 3 else softmax(z)
        if tricks == 0:
            mu = attention_m_step(x, z)  # weights z / (eps + N_k) first, then the product
        else:
            counts = EPS + np.sum(z, axis=-2, keepdims=True)  # (B, 1, K)
            if tricks >= 2:
                mu = (np.matmul(x.mT, z) / counts).mT  # (B, C, N) @ (B, N, K) -> (B, C, K)
            else:
                mu = np.matmul(z.mT, x) / counts.mT  # (B, K, N) @ (B, N, C) -> (B, K, C)
        mu = l2_normalize(mu)
    return z, mu


def bench_ladder(rng, repeats):
    batch, n_points, n_channels, n_bases, n_iter = SHAPE.values()
    x, mu = features_and_bases(rng, batch, n_points, n_channels, n_bases)
    reference = em_attention(x, mu, n_iter)[2]
    for tricks in range(len(TRICKS) + 1):  # a guard against timing a wrong computation
        x_tilde = attention_reconstruct(*ladder_rung(x, mu, n_iter, tricks))  # (B, N, C)
        np.testing.assert_allclose(x_tilde, reference, atol=1e-4)
    print(f"\nWhat each trick of em_tutorial.ema_fast buys in the T iterations (B={batch}, "
          f"N={n_points}, C={n_channels}, K={n_bases}, T={n_iter}, float32; medians of "
          f"{repeats} repeats)")
    seconds = side_by_side(
        {tricks: lambda t=tricks: ladder_rung(x, mu, n_iter, t)
         for tricks in range(len(TRICKS) + 1)},
        repeats,
    )
    runs = {tricks: np.array(times) for tricks, times in seconds.items()}
    # peak memory does not depend on the load of the machine, unlike the times
    mib = {tricks: peak_bytes(lambda t=tricks: ladder_rung(x, mu, n_iter, t)) / 2**20
           for tricks in runs}
    print(f"  {'plain loop':36s} median {np.median(runs[0]) * 1e3:7.1f} ms  "
          f"peak {mib[0]:6.1f} MiB")
    for tricks, name in enumerate(TRICKS, start=1):
        ratio = np.median(runs[tricks - 1] / runs[tricks])
        of_medians = np.median(runs[tricks - 1]) / np.median(runs[tricks])
        print(f"  + {tricks}. {name:31s} median {np.median(runs[tricks]) * 1e3:7.1f} ms  "
              f"peak {mib[tricks]:6.1f} MiB  speed-up {ratio:.2f}x "
              f"(ratio of the medians {of_medians:.2f}x)")
    print(f"  all {len(TRICKS)} against the plain loop: "
          f"{np.median(runs[0] / runs[len(TRICKS)]):.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed runs of the EM-attention comparison"
    )
    parser.add_argument("--non-local-repeats", type=int, default=2)
    parser.add_argument("--no-non-local", action="store_true", help="skip the slow non-local part")
    parser.add_argument("--ladder", action="store_true",
                        help="time what each trick of em_tutorial.ema_fast buys, nothing else")
    args = parser.parse_args(argv)
    print(f"NumPy {np.__version__}, {os.cpu_count()} CPUs visible")
    rng = np.random.default_rng(0)
    if args.ladder:
        bench_ladder(rng, args.repeats)
        return 0
    passed = bench_em_attention(rng, args.repeats)
    if not args.no_non_local:
        bench_non_local(rng, args.non_local_repeats)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
