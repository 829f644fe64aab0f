#!/usr/bin/env bash
# The GPU check: run it on any machine with an NVIDIA GPU, then copy the table it prints into
# benchmarks/RESULTS.md with the date and the GPU's name.
#
#   scripts/gpu_check.sh            # uses .venv/ if present, else the current python
#
# Installs nothing. Expects the environment the README / CI set up (pip install -e
# ".[gpu,torch,dev]"). Works whether or not torch was built with CUDA: the CuPy tests and
# benchmarks need only CuPy; torch's CUDA state is reported, not required.
# Runs the GPU tests (at most 170 s, first CuPy kernel compilations included) and the GPU
# benchmark (at most 110 s): under 5 minutes in all.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=${PYTHON:-python3}; fi

echo "== environment"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found"
fi
"$PYTHON" - <<'PY'
import importlib.util

from em_tutorial.backend import gpu_available

if importlib.util.find_spec("cupy") is None:
    print("cupy: not installed (pip install -e '.[gpu]' with the cupy-cudaXXx wheel for your CUDA)")
else:
    import cupy

    print(f"cupy {cupy.__version__}: GPU visible = {gpu_available()}")
    if gpu_available():
        try:  # the fused kernels are compiled at run time by NVRTC
            print(f"  CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
                  f"NVRTC {cupy.cuda.nvrtc.getVersion()}")
        except Exception as error:  # a missing libnvrtc shows up here, before the tests
            print(f"  NVRTC not usable ({error}); install the CUDA toolkit or nvidia-cuda-nvrtc")
if importlib.util.find_spec("torch") is None:
    print("torch: not installed")
else:
    import torch

    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}: CUDA available = {cuda}"
          + ("" if cuda else " (CPU build: its CUDA paths are not exercised)"))
PY
if ! "$PYTHON" -c "import em_tutorial.backend as b; raise SystemExit(not b.gpu_available())"; then
    echo "No GPU visible to CuPy: nothing to check here (the GPU tests skip on this machine)."
    exit 0
fi

echo
echo "== GPU tests (pytest -m gpu)"
start=$SECONDS
timeout 170 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider \
    | tee /tmp/em_tutorial_gpu_tests.log | tail -n 25
tests_rc=${PIPESTATUS[0]}
tests_s=$((SECONDS - start))

echo
echo "== GPU benchmark (benchmarks/bench_gpu.py)"
start=$SECONDS
timeout 110 "$PYTHON" benchmarks/bench_gpu.py --cpu-repeat 1
bench_rc=$?
bench_s=$((SECONDS - start))

echo
echo "== summary"
status() { [[ $1 == 0 ]] && echo ok || echo "FAIL($1)"; }
printf '%-16s %-10s %6s\n' step status seconds
printf '%-16s %-10s %6s\n' "gpu tests" "$(status "$tests_rc")" "$tests_s"
printf '%-16s %-10s %6s\n' "gpu benchmark" "$(status "$bench_rc")" "$bench_s"
grep -E "passed|failed|error" /tmp/em_tutorial_gpu_tests.log | tail -n 1
[[ $tests_rc == 0 && $bench_rc == 0 ]]
