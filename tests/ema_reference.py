"""A float64 loop oracle for EM attention, shared by the tests of every stage.

One feature map, one pixel and one basis at a time, with ``math.fsum`` for every sum: slow,
but independent of the vectorised code it checks (no matmul, no shared helper).
"""

import math

import numpy as np

from em_tutorial.ema import EPS


def reference_em_attention(x, mu, n_iter, lam):
    """EM attention for one feature map, one pixel and one basis at a time, in float64."""
    x = np.asarray(x, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    n_pixels, n_bases = x.shape[0], mu.shape[0]
    history = []
    for _ in range(n_iter):
        z = np.empty((n_pixels, n_bases))
        for n in range(n_pixels):
            logits = np.array([lam * math.fsum(x[n] * mu[k]) for k in range(n_bases)])
            e = np.exp(logits - logits.max())
            z[n] = e / math.fsum(e)
        new_mu = np.empty_like(mu)
        for k in range(n_bases):
            count = math.fsum(z[:, k])
            mean = np.array([math.fsum(z[:, k] * x[:, c]) for c in range(x.shape[1])])
            mean /= EPS + count
            new_mu[k] = mean / (EPS + math.sqrt(math.fsum(mean**2)))
        mu = new_mu
        history.append((z, mu))
    x_tilde = np.array([sum(z[n, k] * mu[k] for k in range(n_bases)) for n in range(n_pixels)])
    return z, mu, x_tilde, history


def reference_batched(x, mu, n_iter, lam):
    if x.ndim == 2:
        return reference_em_attention(x, mu, n_iter, lam)[:3]
    per_map = [
        reference_em_attention(x[b], mu if mu.ndim == 2 else mu[b], n_iter, lam)[:3]
        for b in range(x.shape[0])
    ]
    return tuple(np.stack(parts) for parts in zip(*per_map))
