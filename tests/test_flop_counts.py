"""The FLOP formulas of EM attention and the non-local block against PyTorch's own count.

:func:`em_tutorial.ema.em_attention_flops` and :func:`em_tutorial.non_local.non_local_flops`
are checked against :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the
products the package's PyTorch code actually runs (2 FLOPs per multiply-add), so a wrong
coefficient or power in either formula shows up as a mismatch at some size.
"""

import re

import numpy as np
import pytest

from em_tutorial import non_local
from em_tutorial.ema import em_attention_flops
from em_tutorial.non_local import non_local_flops


@pytest.fixture
def torch():
    """PyTorch, an optional dependency: the counter tests are skipped without it."""
    return pytest.importorskip("torch")


def counted_flops(function, *args, **kwargs):
    """FLOPs per operator that FlopCounterMode saw while ``function`` ran."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function(*args, **kwargs)
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


# (N, K, C, T): N and K on both sides of each other, T = 1 and EMANet's 3
@pytest.mark.parametrize("n, k, c, t", [(35, 4, 16, 1), (64, 8, 3, 3), (12, 30, 7, 2)])
def test_em_attention_flops_match_the_counter(torch, n, k, c, t):
    from em_tutorial.nn import functional as attention_torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=generator, dtype=torch.float64)  # (N, C)
    mu = torch.randn(k, c, generator=generator, dtype=torch.float64)  # (K, C)
    counted = counted_flops(attention_torch.em_attention, x, mu, n_iter=t)
    assert sum(counted.values()) == em_attention_flops(n, k, c, t)


def test_em_attention_flops_are_per_feature_map(torch):
    from em_tutorial.nn import functional as attention_torch

    batch, n, k, c, t = 3, 20, 5, 6, 3
    x = torch.randn(batch, n, c)  # (B, N, C)
    mu = torch.randn(k, c)  # (K, C), shared by the batch
    counted = counted_flops(attention_torch.em_attention, x, mu, n_iter=t)
    assert sum(counted.values()) == batch * em_attention_flops(n, k, c, t)


@pytest.mark.parametrize("n, c", [(35, 16), (100, 3), (7, 40)])
def test_non_local_flops_match_the_counter_on_the_array_api_stage(torch, n, c):
    """``non_local`` with identity embeddings: C' = C, and only the two attention products."""
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counted = counted_flops(non_local.non_local, x)  # (N, C) -> (N, C)
    assert sum(counted.values()) == non_local_flops(n, c)


@pytest.mark.parametrize("channels, inter_channels, side", [(16, 6, 5), (8, 8, 9), (12, 2, 4)])
def test_non_local_flops_match_the_attention_products_of_the_block(torch, channels,
                                                                    inter_channels, side):
    """NonLocal2d with C' != C: its batched products are the attention; the rest are 1x1 convs."""
    from em_tutorial.nn import NonLocal2d

    block = NonLocal2d(channels, inter_channels).eval()
    batch = 2
    x = torch.randn(batch, channels, side, side)  # (B, C, H, W)
    with torch.no_grad():
        counted = counted_flops(block, x)
    assert set(counted) == {"aten.bmm", "aten.convolution"}, counted
    assert counted["aten.bmm"] == batch * non_local_flops(side * side, inter_channels)


def test_paper_sizes():
    """97 x 97, C = 512, C' = 256, K = 64, T = 3: about 21 times the work for the non-local."""
    n = 97 * 97
    assert em_attention_flops(n, 64, 512, 3) == 14 * n * 64 * 512
    assert round(non_local_flops(n, 256) / em_attention_flops(n, 64, 512, 3)) == 21


def test_numpy_integers_give_exact_python_ints():
    """No int64 wrap-around: 4 N^2 C' at N = 2**20 pixels exceeds 2**63."""
    flops = non_local_flops(np.int64(2**20), np.int64(2**21))
    assert type(flops) is int and flops == 2**63
    assert type(em_attention_flops(*np.array([10, 2, 3, 1]))) is int


@pytest.mark.parametrize("function, arguments, position, name", [
    (em_attention_flops, (10, 4, 8, 3), 0, "n_pixels (N)"),
    (em_attention_flops, (10, 4, 8, 3), 1, "n_bases (K)"),
    (em_attention_flops, (10, 4, 8, 3), 2, "n_channels (C)"),
    (em_attention_flops, (10, 4, 8, 3), 3, "n_iter (T)"),
    (non_local_flops, (10, 4), 0, "n_pixels (N)"),
    (non_local_flops, (10, 4), 1, "inter_channels (C')"),
])
@pytest.mark.parametrize("bad, error", [
    (0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError), ("3", TypeError),
    (None, TypeError),
])
def test_bad_counts_are_named(function, arguments, position, name, bad, error):
    arguments = list(arguments)
    arguments[position] = bad
    with pytest.raises(error, match="^" + re.escape(f"{name} must be a positive integer")):
        function(*arguments)
