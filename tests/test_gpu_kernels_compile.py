"""The fused kernels' CUDA source compiles: a CPU-side check with nvcc, no GPU needed.

On a GPU machine CuPy compiles the same string with NVRTC; the GPU tests in test_gpu_ema.py
then check the numbers. Here we only learn that the source is valid CUDA C++ for both element
types and that ptxas accepts it for a current GPU architecture without register spills.
"""

import shutil
import subprocess

import pytest

from em_tutorial.gpu.kernels import CUDA_SOURCE, KERNEL_NAMES, instantiation_source

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not on PATH")


def _nvcc(tmp_path, source, *flags):
    cu = tmp_path / "kernels.cu"
    cu.write_text(source)
    result = subprocess.run(
        [NVCC, "--std=c++14", "-Werror", "all-warnings", *flags, str(cu)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    return result


def test_source_needs_no_headers():
    # NVRTC (what CuPy uses) has no system headers; an #include would compile here and fail there.
    assert "#include" not in CUDA_SOURCE


def test_every_kernel_compiles_for_float_and_double(tmp_path):
    result = _nvcc(tmp_path, instantiation_source(), "--ptx", "-arch=compute_80", "-o", "k.ptx")
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    entries = [line for line in ptx.splitlines() if line.startswith(".visible .entry")]
    for name in KERNEL_NAMES:
        # Itanium mangling: I f E = <float>, I d E = <double>
        for type_code in "fd":
            assert any(f"{name}I{type_code}E" in e for e in entries), (name, type_code, entries)


def test_kernels_assemble_for_hopper_without_spills(tmp_path):
    result = _nvcc(tmp_path, instantiation_source(), "-c", "-arch=sm_90", "-Xptxas", "-v",
                   "-o", "k.o")
    assert result.returncode == 0, result.stderr
    # ptxas -v reports "0 bytes spill stores, 0 bytes spill loads" for each kernel
    spills = [line for line in result.stderr.splitlines() if "spill" in line]
    assert len(spills) == 2 * len(KERNEL_NAMES), result.stderr
    assert all("0 bytes spill stores, 0 bytes spill loads" in line for line in spills), spills


def test_a_broken_source_is_caught(tmp_path):
    # The check above could fail: a type error in the source must make nvcc fail.
    broken = instantiation_source().replace("row_sum = warp_sum(row_sum);",
                                            "row_sum = warp_sum(&row_sum);")
    assert broken != instantiation_source()
    result = _nvcc(tmp_path, broken, "--ptx", "-arch=compute_80", "-o", "k.ptx")
    assert result.returncode != 0
