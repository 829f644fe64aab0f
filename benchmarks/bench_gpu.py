"""GPU benchmark: EM attention and the Gaussian-mixture fit, CPU vs plain CuPy vs fused.

Run ``python benchmarks/bench_gpu.py`` (``scripts/gpu_check.sh`` runs it with the GPU tests).
On a machine without a usable GPU it says why the GPU part was skipped and exits 0.

What is measured, side by side in one run:

1. The GPU's own ceilings: float32 matmul GFLOP/s (cuBLAS, 8192^3) and device-to-device copy
   GB/s (1 GiB, read + write counted).
2. ``em_attention`` at B=16, N=9409 (97 x 97, EMANet's 769-pixel crop at stride 8), C=512,
   K=64, T=3, float32: NumPy on the CPU, the plain CuPy port, the fused kernels.
   FLOPs: two (B, N, K, C) matmuls per iteration plus the reconstruction, ``(4T + 2) BNKC``.
   Bytes: the least any implementation must move, one read of X per iteration, the
   (B, N, K) Z and the (B, N, C) reconstruction written once: ``4 ((T + 1) BNC + BNK)``.
   Target: fused time <= 2 x max(compute floor, memory floor), floor = FLOPs / matmul rate,
   bytes / copy bandwidth.
3. The full-covariance Gaussian-mixture fit of the gmm benchmark (``bench_gmm.make_data``:
   n=100000, d=16, K=16, the same start, 20 EM iterations): scikit-learn and em_tutorial.gmm
   on the CPU (float64), GaussianMixtureGPU on the GPU (float64, and float32, the GPU
   default). Target: GPU float32 >= 50 x scikit-learn.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from em_tutorial.backend import to_numpy

EMA_SHAPE = dict(batch=16, n_points=9409, n_channels=512, n_bases=64, n_iter=3)
GMM_SHAPE = dict(n_samples=100_000, n_features=16, n_components=16, n_iter=20)
EMA_TARGET_RATIO = 2.0
GMM_TARGET_SPEEDUP = 50.0


def gpu_seconds(func, n_repeat, n_warmup=1):
    """Median time of ``func()`` with CuPy arrays: the longer of host time and GPU time.

    The GPU time (CUDA events around each call) counts queued work the host does not wait
    for; the host time counts launch overheads and host round-trips while the GPU idles.
    """
    from cupyx.profiler import benchmark

    result = benchmark(func, n_repeat=n_repeat, n_warmup=n_warmup)
    return float(max(np.median(result.cpu_times), np.median(result.gpu_times[0])))


def cpu_seconds(func, n_repeat):
    times = []
    for _ in range(n_repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure_ceilings():
    """Measured float32 matmul rate (FLOP/s) and device copy bandwidth (bytes/s)."""
    import cupy

    n = 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    matmul_rate = 2 * n**3 / gpu_seconds(lambda: cupy.matmul(a, b), n_repeat=10)
    del a, b
    src = cupy.ones(2**28, dtype=cupy.float32)  # 1 GiB
    dst = cupy.empty_like(src)
    copy_rate = 2 * src.nbytes / gpu_seconds(lambda: cupy.copyto(dst, src), n_repeat=10)
    return matmul_rate, copy_rate


def bench_ema(matmul_rate, copy_rate, cpu_repeat):
    import cupy

    from em_tutorial import ema
    from em_tutorial.ema_fast import em_attention_fast
    from em_tutorial.gpu import em_attention_fused, to_gpu

    B, N, C, K, T = (
        EMA_SHAPE[key] for key in ("batch", "n_points", "n_channels", "n_bases", "n_iter")
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, N, C), dtype=np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    mu = rng.standard_normal((K, C), dtype=np.float32)
    mu /= np.linalg.norm(mu, axis=-1, keepdims=True)
    x_d, mu_d = to_gpu(x, mu)

    flops = (4 * T + 2) * B * N * K * C
    min_bytes = 4 * ((T + 1) * B * N * C + B * N * K)
    times = {
        "NumPy (CPU)": cpu_seconds(lambda: em_attention_fast(x, mu, n_iter=T), cpu_repeat),
        "CuPy plain": gpu_seconds(lambda: ema.em_attention(x_d, mu_d, n_iter=T), n_repeat=20),
        "CuPy fused": gpu_seconds(lambda: em_attention_fused(x_d, mu_d, n_iter=T), n_repeat=20),
    }
    # the three agree (the tests check this in detail; here a guard against timing a wrong path)
    fused_z = em_attention_fused(x_d, mu_d, n_iter=T)[0]
    plain_z = ema.em_attention(x_d, mu_d, n_iter=T)[0]
    max_diff = float(cupy.max(cupy.abs(fused_z - plain_z)))
    floors = (flops / matmul_rate, min_bytes / copy_rate)  # compute, memory
    rows = [
        (name, t, flops / t / 1e9, min_bytes / t / 1e9, times["NumPy (CPU)"] / t)
        for name, t in times.items()
    ]
    return rows, floors, times["CuPy fused"] / max(floors), max_diff


def bench_gmm(cpu_repeat):
    """The gmm benchmark's problem and start (bench_gmm.make_data), CPU vs GPU."""
    from bench_gmm import fit_once, make_data
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

    from em_tutorial.gmm import GaussianMixture
    from em_tutorial.gpu import GaussianMixtureGPU, to_gpu

    n, d, K, n_iter = (GMM_SHAPE[key] for key in
                       ("n_samples", "n_features", "n_components", "n_iter"))
    X, start = make_data(n, d, K)  # float64; the same initial parameters for every fit

    def best_of(repeats, model_class, data):
        # fit_once times fit(); on the GPU, fit ends by reading the labels back (a sync)
        return min((fit_once(model_class, data, start, n_iter) for _ in range(repeats)),
                   key=lambda pair: pair[0])

    fit_once(GaussianMixtureGPU, to_gpu(X), start, 1)  # compile CuPy's kernels untimed
    runs = {
        "scikit-learn (CPU, float64)": (cpu_repeat, SklearnGaussianMixture, X),
        "em_tutorial NumPy (CPU, float64)": (cpu_repeat, GaussianMixture, X),
        "em_tutorial CuPy (GPU, float64)": (3, GaussianMixtureGPU, to_gpu(X, dtype=None)),
        "em_tutorial CuPy (GPU, float32)": (3, GaussianMixtureGPU, to_gpu(X)),
    }
    fits = {name: best_of(*run) for name, run in runs.items()}
    reference_time, reference = fits["scikit-learn (CPU, float64)"]
    # E-step (x - mu_k) P_k and M-step covariance sums: ~4 n K d^2 FLOPs per iteration.
    flops = 4 * n * K * d * d * n_iter
    rows = []
    for name, (seconds, model) in fits.items():
        # agreement with scikit-learn: a guard against timing a wrong computation
        means_diff = float(np.max(np.abs(to_numpy(model.means_) - reference.means_)))
        rows.append((name, seconds, flops / seconds / 1e9, reference_time / seconds, means_diff))
    return rows, reference_time / fits["em_tutorial CuPy (GPU, float32)"][0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-repeat", type=int, default=3,
        help="timed runs of each CPU version (EM attention: the median; mixture: the best, "
        "as in bench_gmm.py)",
    )
    args = parser.parse_args(argv)

    from em_tutorial.gpu import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"GPU benchmark skipped: {reason}. Nothing was measured.")
        return 0

    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"GPU: {name}, CuPy {cupy.__version__}, "
          f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
          f"{time.strftime('%Y-%m-%d')}")
    matmul_rate, copy_rate = measure_ceilings()
    print(f"measured ceilings: float32 matmul {matmul_rate / 1e9:,.0f} GFLOP/s, "
          f"device copy {copy_rate / 1e9:,.0f} GB/s\n")

    rows, (compute_floor, memory_floor), ratio, max_diff = bench_ema(
        matmul_rate, copy_rate, args.cpu_repeat
    )
    print("em_attention B=16 N=9409 C=512 K=64 T=3 float32")
    print(f"{'version':<14} {'ms':>9} {'GFLOP/s':>9} {'GB/s':>7} {'vs NumPy':>9}")
    for version, t, gflops, gbs, speedup in rows:
        print(f"{version:<14} {t * 1e3:9.2f} {gflops:9.0f} {gbs:7.0f} {speedup:8.1f}x")
    ema_ok = ratio <= EMA_TARGET_RATIO
    print(f"floors: compute {compute_floor * 1e3:.2f} ms, memory {memory_floor * 1e3:.2f} ms; "
          f"fused / larger floor = {ratio:.2f} "
          f"(target <= {EMA_TARGET_RATIO:g}): {'MET' if ema_ok else 'NOT MET'}; "
          f"max |z_fused - z_plain| = {max_diff:.1e}\n")

    rows, speedup = bench_gmm(args.cpu_repeat)
    print("GaussianMixture full covariance, n=100000 d=16 K=16, 20 EM iterations "
          "(bench_gmm.py's data and start)")
    print(f"{'version':<34} {'s':>8} {'GFLOP/s':>9} {'vs sklearn':>11} {'max|dmu|':>9}")
    for version, t, gflops, vs, means_diff in rows:
        print(f"{version:<34} {t:8.3f} {gflops:9.1f} {vs:10.1f}x {means_diff:9.1e}")
    gmm_ok = speedup >= GMM_TARGET_SPEEDUP
    print(f"GPU vs scikit-learn: {speedup:.1f}x (target >= {GMM_TARGET_SPEEDUP:g}x): "
          f"{'MET' if gmm_ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
