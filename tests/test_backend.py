"""em_tutorial.backend: one namespace per call, a clear error when libraries are mixed."""

import sys
import types

import array_api_strict
import numpy as np
import pytest

from em_tutorial import backend
from em_tutorial.backend import get_array_module, gpu_available, to_device, to_numpy


def test_numpy_arrays_give_a_numpy_namespace():
    xp = get_array_module(np.ones(3), np.zeros((2, 2)), 1.5, None)
    assert backend.is_numpy_namespace(xp)
    assert not backend.is_cupy_namespace(xp)


def test_scalars_and_none_alone_give_numpy():
    assert backend.is_numpy_namespace(get_array_module(1, 2.0, None))


def test_strict_arrays_give_the_strict_namespace():
    a = array_api_strict.asarray([1.0, 2.0])
    assert get_array_module(a, a) is array_api_strict


def test_numpy_mixed_with_strict_is_a_type_error():
    with pytest.raises(TypeError, match="different libraries"):
        get_array_module(np.ones(2), array_api_strict.asarray([1.0]))


@pytest.fixture
def fake_cupy_array(monkeypatch):
    """An object that array_api_compat takes for a CuPy array, made without a GPU.

    array_api_compat recognises CuPy arrays as instances of ``sys.modules["cupy"].ndarray``;
    a real one needs a device to allocate, so a stand-in module provides the class.
    """
    fake = types.ModuleType("cupy")

    class ndarray:  # noqa: N801 (the name array_api_compat looks for)
        shape = (2,)
        dtype = np.dtype(np.float64)

    fake.ndarray = ndarray
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return ndarray()


def test_fake_cupy_array_is_seen_as_cupy(fake_cupy_array):
    assert backend._kind(fake_cupy_array) == "cupy"


@pytest.mark.parametrize("order", ["numpy_first", "cupy_first"])
def test_numpy_mixed_with_cupy_is_a_clear_type_error(fake_cupy_array, order):
    arrays = [np.ones(2), fake_cupy_array]
    if order == "cupy_first":
        arrays.reverse()
    with pytest.raises(TypeError) as info:
        get_array_module(*arrays)
    message = str(info.value)
    assert "['cupy', 'numpy']" in message
    assert "to_device" in message and "to_numpy" in message


def test_gpu_available_is_a_bool():
    assert isinstance(gpu_available(), bool)


def test_gpu_available_is_false_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    assert gpu_available() is False


def test_to_device_without_a_gpu_names_the_problem(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(RuntimeError, match="no GPU"):
        to_device(np.ones(3))


def test_to_numpy_passes_numpy_through_and_converts_lists():
    a = np.arange(4.0)
    assert to_numpy(a) is a
    np.testing.assert_array_equal(to_numpy([1.0, 2.0]), np.array([1.0, 2.0]))


def test_to_numpy_from_torch():
    torch = pytest.importorskip("torch")
    t = torch.arange(3.0, requires_grad=True)
    out = to_numpy(t)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, np.arange(3.0, dtype=np.float32))


# --- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_available_on_a_gpu_machine():
    assert gpu_available()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [None, np.float32])
def test_round_trip_through_the_device(dtype):
    import cupy

    host = np.random.default_rng(0).standard_normal((5, 3))
    device = to_device(host, dtype=dtype)
    assert isinstance(device, cupy.ndarray)
    assert device.dtype == (host.dtype if dtype is None else np.dtype(dtype))
    back = to_numpy(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host.astype(device.dtype))


@pytest.mark.gpu
def test_real_numpy_and_cupy_arrays_mixed_is_a_type_error():
    device = to_device(np.ones(3))
    assert backend.is_cupy_namespace(get_array_module(device))
    with pytest.raises(TypeError, match=r"\['cupy', 'numpy'\]"):
        get_array_module(np.ones(3), device)


# --- em_tutorial.gpu's helpers on top of the backend --------------------------------------------


def test_gpu_unavailable_reason_names_the_missing_piece(monkeypatch):
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    assert "sees no CUDA GPU" in backend.gpu_unavailable_reason()
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert "not installed" in backend.gpu_unavailable_reason()


def test_to_gpu_without_a_gpu_is_a_clear_error(monkeypatch):
    from em_tutorial.gpu import to_gpu

    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(RuntimeError, match="no GPU"):
        to_gpu(np.ones(3), np.ones(2))


@pytest.mark.gpu
def test_to_gpu_moves_float32_by_default():
    import cupy

    from em_tutorial.gpu import gpu_unavailable_reason, to_gpu

    assert gpu_unavailable_reason() is None
    one = to_gpu(np.ones(3))
    assert isinstance(one, cupy.ndarray) and one.dtype == np.float32
    a, b = to_gpu(np.ones(3), np.arange(2), dtype=None)
    assert a.dtype == np.float64 and b.dtype == np.arange(2).dtype
