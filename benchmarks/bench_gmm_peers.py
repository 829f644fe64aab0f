"""em_tutorial.gmm.GaussianMixture beside other Gaussian-mixture implementations on the same CPU.

Two tables, each from one run, the fits alternating with a pause before each
(:data:`bench_gmm.SETTLE_SECONDS`), the data and starting point of ``bench_gmm.py``:

1. **scikit-learn on PyTorch tensors.** scikit-learn's own ``GaussianMixture`` under
   ``sklearn.config_context(array_api_dispatch=True)`` on PyTorch CPU tensors, against ours on
   the same tensors: float64, the same start, 10 iterations, tol = 0, every covariance type
   at each ``--shape`` (default: the headline shape, 100k x 16 x 16). A cell reads
   ``ours / scikit-learn = ratio``; goal: ours no slower (ratio <= 1).
2. **torchgmm** (optional: the table is skipped, with the reason, when it is not installed)
   at the headline shape, full covariances, float32, 20 iterations
   from the same means, every library limited to 2 threads: torchgmm, ours on NumPy, ours
   on PyTorch CPU tensors, scikit-learn on NumPy. torchgmm's time is that of its ``fit``,
   PyTorch Lightning's set-up (three trainers) and its own start (two passes over the data)
   included; a second line takes them out: (fit of 20 iterations - fit of 1) / 19. Goal:
   ours at most 1/3 of torchgmm's time, on NumPy and on PyTorch input.

Each table prints the largest difference of the fitted means between the implementations
(they must agree: float64 to ~1e-12, float32 to ~1e-4). The goals are printed as met or not;
nothing here sets the exit status.

torchgmm 0.1.4 requires torch, and a plain ``pip install torchgmm`` may replace the PyTorch
build in place; to keep it, install torchgmm and what its mixture imports without
dependencies (its other requirements, anndata and session-info, are not imported by it):

    pip install --no-deps torchgmm pytorch-lightning torchmetrics lightning-utilities

    python benchmarks/bench_gmm_peers.py             # both tables (a few minutes)
    python benchmarks/bench_gmm_peers.py --quick     # n / 20, one repeat: a smoke run
    python benchmarks/bench_gmm_peers.py --only torchgmm
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import time
import warnings

import bench_gmm  # first: sets SCIPY_ARRAY_API before SciPy is imported
import numpy as np
import sklearn.mixture
import threadpoolctl
import torch

import em_tutorial.gmm

HEADLINE_SHAPE, HEADLINE_TYPE = bench_gmm.HEADLINE
TORCHGMM_ITERATIONS = 20
N_THREADS = 2
#: ours / torchgmm, on NumPy and on PyTorch input
TORCHGMM_GOAL = 1 / 3
#: added to the covariances' diagonal by every implementation (each one's default)
REG_COVAR = 1e-6


def array_api_table(shapes, divisor, repeats):
    """Ours against scikit-learn, both on PyTorch CPU tensors under array-API dispatch."""
    rows, ratios = [], []
    for n_samples, n_features, n_components in shapes:
        X = torch.from_numpy(bench_gmm.make_data(n_samples // divisor, n_features,
                                                 n_components))
        cells = []
        for covariance_type in bench_gmm.TYPES:
            start = {name: torch.from_numpy(value) for name, value in
                     bench_gmm.starting_point(X.numpy(), n_components, covariance_type).items()}
            runs = {"ours": dispatched_fit(em_tutorial.gmm.GaussianMixture, X,
                                           covariance_type, start),
                    "scikit-learn": dispatched_fit(sklearn.mixture.GaussianMixture, X,
                                                   covariance_type, start)}
            median, models = bench_gmm.compare(runs, repeats)
            for name, model in models.items():
                # a fit that went through NumPy instead would return NumPy means
                if not isinstance(model.means_, torch.Tensor):
                    raise RuntimeError(f"{name}: means_ is a {type(model.means_)}, "
                                       "not a torch.Tensor")
            seconds_ours, seconds_theirs = median["ours"], median["scikit-learn"]
            difference = float((models["ours"].means_
                                - models["scikit-learn"].means_).abs().max())
            ratios.append(seconds_ours / seconds_theirs)
            cells.append(bench_gmm.cell(seconds_ours, seconds_theirs) + f" ({difference:.0e})")
        rows.append((bench_gmm.shape_label(tuple(X.shape) + (n_components,)), cells))
    bench_gmm.print_table(
        f"PyTorch CPU tensors, array-API dispatch, float64, {bench_gmm.N_ITER} iterations, "
        f"median of {repeats}: ours / scikit-learn = ratio (largest difference of the means)",
        bench_gmm.TYPES, rows)
    worst = max(ratios)
    print(f"\nworst ratio {worst:.2f}: goal <= 1 (ours no slower) "
          f"{'met' if worst <= 1 else 'not met'}")


def dispatched_fit(model_class, X, covariance_type, start):
    """A timed fit of ``model_class`` under array-API dispatch, to call later."""
    return lambda: bench_gmm.timed_fit(model_class, X, covariance_type, start, dispatch=True)


@contextlib.contextmanager
def limited_threads(n_threads):
    """The process on ``n_threads`` cores (where it has more), BLAS, OpenMP and PyTorch on
    as many threads; all restored on exit. Our engine sizes its pool from the affinity."""
    cores = os.sched_getaffinity(0)
    torch_threads = torch.get_num_threads()
    os.sched_setaffinity(0, sorted(cores)[:n_threads])
    torch.set_num_threads(n_threads)
    try:
        with threadpoolctl.threadpool_limits(limits=n_threads):
            yield
    finally:
        torch.set_num_threads(torch_threads)
        os.sched_setaffinity(0, cores)


def torchgmm_start(X, initial_means, reg_covar):
    """The parameters torchgmm's EM starts from when given ``init_means``, full covariances.

    torchgmm assigns every sample to its nearest initial mean, then takes the weights,
    means and covariances (plus ``reg_covar`` on the diagonal) of those hard assignments.
    Computed here the same way (the same ``torch.cdist`` on the same float32 tensors, so
    the same assignments), in float64, and handed to the other implementations as float32
    ``weights_init``, ``means_init``, ``precisions_init``.

    Parameters
    ----------
    X : torch.Tensor of shape (N, d), float32
    initial_means : torch.Tensor of shape (K, d), float32
    reg_covar : float

    Returns
    -------
    dict of NumPy float32 arrays: weights (K,), means (K, d), precisions (K, d, d)
    """
    labels = torch.cdist(X, initial_means).argmin(dim=1).numpy()  # (N,)
    samples = X.numpy().astype(np.float64)
    n_components, n_features = initial_means.shape
    counts = np.bincount(labels, minlength=n_components)  # (K,)
    means = np.stack([samples[labels == k].mean(axis=0) for k in range(n_components)])
    covariances = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        centred = samples[labels == k] - means[k]  # (N_k, d)
        # Sigma_k = (1/N_k) sum_n (x_n - mu_k)(x_n - mu_k)^T + reg I: (d, N_k) @ (N_k, d)
        covariances[k] = centred.T @ centred / counts[k] + reg_covar * np.eye(n_features)
    return dict(weights_init=(counts / counts.sum()).astype(np.float32),
                means_init=means.astype(np.float32),
                precisions_init=np.linalg.inv(covariances).astype(np.float32))


def timed_torchgmm_fit(X, initial_means, n_iter):
    """(seconds, fitted torchgmm estimator) for one fit of ``n_iter`` EM iterations.

    How torchgmm is made to run exactly ``n_iter`` iterations from ``initial_means``:

    - ``init_means`` skips its k-means; its own start then follows (see
      :func:`torchgmm_start`, which gives the other implementations the same start);
    - ``convergence_tolerance=0`` adds no early-stopping callback, so training runs for as
      many epochs as the trainer allows;
    - ``trainer_params={"max_epochs": n_iter}`` allows ``n_iter`` iterations. With the whole
      data in one batch (no ``batch_size``), torchgmm 0.1.4 splits each EM iteration over
      two epochs (the E-step twice: for the means, then for the covariances) and doubles
      the epochs itself; ``num_iter_`` counts iterations and is checked below.
    """
    from torchgmm.bayes.gmm import GaussianMixture

    model = GaussianMixture(
        len(initial_means), covariance_type=HEADLINE_TYPE, init_means=initial_means,
        convergence_tolerance=0.0, covariance_regularization=REG_COVAR,
        trainer_params=dict(max_epochs=n_iter, accelerator="cpu", devices=1, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and deprecations
        time.sleep(bench_gmm.SETTLE_SECONDS)
        begin = time.perf_counter()
        model.fit(X)
        seconds = time.perf_counter() - begin
    if model.num_iter_ != n_iter:
        raise RuntimeError(f"torchgmm ran {model.num_iter_} iterations, not {n_iter}")
    return seconds, model


def torchgmm_table(divisor, repeats):
    """torchgmm, ours (NumPy and PyTorch) and scikit-learn at the headline shape, float32."""
    if importlib.util.find_spec("torchgmm") is None:
        print("\ntorchgmm: skipped, not installed (this file's docstring says how to install it)")
        return
    import torchgmm.bayes.gmm  # noqa: F401  (imports PyTorch Lightning, which sets its log level)

    # Lightning announces the devices it finds, and more, at every trainer it makes
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    n_samples, n_features, n_components = HEADLINE_SHAPE
    X = bench_gmm.make_data(n_samples // divisor, n_features, n_components).astype(np.float32)
    X_torch = torch.from_numpy(X)
    initial_means = torch.from_numpy(
        bench_gmm.starting_point(X, n_components, HEADLINE_TYPE)["means_init"])
    start = torchgmm_start(X_torch, initial_means, REG_COVAR)
    start_torch = {name: torch.from_numpy(value) for name, value in start.items()}
    n_iter = TORCHGMM_ITERATIONS
    runs = {
        "torchgmm": lambda: timed_torchgmm_fit(X_torch, initial_means, n_iter),
        "torchgmm, 1 iteration": lambda: timed_torchgmm_fit(X_torch, initial_means, 1),
        "ours, NumPy": lambda: bench_gmm.timed_fit(
            em_tutorial.gmm.GaussianMixture, X, HEADLINE_TYPE, start, n_iter=n_iter),
        "ours, PyTorch": lambda: bench_gmm.timed_fit(
            em_tutorial.gmm.GaussianMixture, X_torch, HEADLINE_TYPE, start_torch,
            dispatch=True, n_iter=n_iter),
        "scikit-learn, NumPy": lambda: bench_gmm.timed_fit(
            sklearn.mixture.GaussianMixture, X, HEADLINE_TYPE, start, n_iter=n_iter),
    }
    with limited_threads(N_THREADS):
        median, models = bench_gmm.compare(runs, repeats)
    fitted_means = {"torchgmm": models["torchgmm"].model_.means.numpy()}
    fitted_means.update((name, np.asarray(model.means_)) for name, model in models.items()
                        if not name.startswith("torchgmm"))
    # the set-up, torchgmm's start and one iteration are in both fits: (t_20 - t_1) / 19
    marginal = (median["torchgmm"] - median["torchgmm, 1 iteration"]) / (n_iter - 1)

    print(f"\n{bench_gmm.shape_label(X.shape + (n_components,))}, {HEADLINE_TYPE}, float32, "
          f"{n_iter} iterations from the same start, {N_THREADS} threads, median of "
          f"{repeats}\n")
    print("| implementation | seconds per fit | ms per iteration | / torchgmm "
          "| largest difference of the means from torchgmm's |")
    print("|---|---|---|---|---|")
    for name, means in fitted_means.items():
        difference = np.max(np.abs(means - fitted_means["torchgmm"]))
        print(f"| {name} | {median[name]:.3f} | {1e3 * median[name] / n_iter:.1f} | "
              f"{median[name] / median['torchgmm']:.2f} | {difference:.0e} |")
    print(f"| torchgmm without its set-up and start: (fit - fit of 1 iteration) / "
          f"{n_iter - 1} | | {1e3 * marginal:.1f} | | |")
    print()
    for name in ("ours, NumPy", "ours, PyTorch"):
        ratio = median[name] / median["torchgmm"]
        print(f"{name} / torchgmm {ratio:.2f}: goal <= 1/3 "
              f"{'met' if ratio <= TORCHGMM_GOAL else 'not met'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"n / {bench_gmm.QUICK_DIVISOR} and one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="fits per implementation")
    parser.add_argument("--shape", action="append", type=bench_gmm.parse_shape,
                        metavar="NxDxK", help="shape of the scikit-learn-on-PyTorch table "
                                              "(repeatable; default: the headline shape)")
    parser.add_argument("--only", choices=["array-api", "torchgmm"],
                        help="only this table")
    args = parser.parse_args()
    divisor, repeats = (bench_gmm.QUICK_DIVISOR, 1) if args.quick else (1, args.repeats)
    print(f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
          f"NumPy {np.__version__}, {len(os.sched_getaffinity(0))} cores")
    if args.only != "torchgmm":
        array_api_table(args.shape or [HEADLINE_SHAPE], divisor, repeats)
    if args.only != "array-api":
        torchgmm_table(divisor, repeats)


if __name__ == "__main__":
    main()
