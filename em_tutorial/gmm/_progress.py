"""The progress messages of :class:`GaussianMixture` (``verbose``), worded as
scikit-learn's."""

from __future__ import annotations

import time


class ProgressMessages:
    """Mixed into :class:`GaussianMixture`; needs its ``verbose`` and ``verbose_interval``."""

    def _print_init_start(self, init):
        if self.verbose >= 1:
            print(f"Initialization {init}")
            self._iteration_time = time.time()

    def _print_iteration(self, n_iter, change):
        if self.verbose >= 1 and n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print(f"  Iteration {n_iter}")
            else:
                now = time.time()
                print(f"  Iteration {n_iter}\t time lapse {now - self._iteration_time:.5f}s"
                      f"\t ll change {change:.5f}")
                self._iteration_time = now

    def _print_init_end(self, lower_bound, converged):
        if self.verbose >= 1:
            state = "converged" if converged else "did not converge"
            print(f"Initialization {state}. lower bound {lower_bound:.5f}.")
