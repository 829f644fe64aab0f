"""Training throughput (images per second) of EMANet.

Run ``python benchmarks/bench_train.py`` (about a minute on 2 CPU cores; add ``--gpu-only`` or
``--cpu-only`` to run one section).

1. CPU: the tiny EMANet of the tour (``em_tutorial.segmentation.TOUR_MODEL``) on 96x96
   digit-scene sized inputs, batch 16, one full SGD step per iteration (forward, cross-entropy,
   backward, update with the official parameter groups), beside the same network without its
   EMAU. The two alternate inside one loop, so a busy machine slows both alike; the median over
   ``--repeats`` rounds is reported, with the ratio.
2. GPU (only where CUDA is available; otherwise the section says it was skipped): the official
   EMANet-ResNet-101 at 513x513, batch 8, one SGD step per iteration, eager and with
   ``torch.compile``, in float32 (TF32 matmuls allowed) and with bfloat16 autocast.

The official recipe trains with batch 16 over several GPUs with synchronised BatchNorm; its
repository gives no images-per-second figure, so none is quoted here for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from em_tutorial.nn import emanet_resnet101, emanet_tiny, param_groups
from em_tutorial.segmentation import TOUR_MODEL


def _step_function(model, images, labels, autocast_dtype=None):
    optimizer = torch.optim.SGD(param_groups(model, 1e-3, 1e-4), lr=1e-3, momentum=0.9)
    device_type = images.device.type

    def step():
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(images), labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _time(step, iterations, synchronize=lambda: None):
    synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize()
    return time.perf_counter() - start


def bench_cpu(repeats, iterations, threads):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch, side, classes = 16, 96, 11
    images = torch.randn(batch, 3, side, side)
    labels = torch.randint(0, classes, (batch, side, side))
    steps = {}
    for name, head in (("tiny EMANet", "emau"), ("tiny, no EMAU", "none")):
        model = emanet_tiny(classes, head=head, **TOUR_MODEL).train()
        steps[name] = _step_function(model, images, labels)
        for _ in range(3):  # warm-up: allocator, oneDNN primitive cache
            steps[name]()
    seconds = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            seconds[name].append(_time(step, iterations))
    print(f"CPU ({torch.get_num_threads()} threads), batch {batch}, {side}x{side}, "
          f"median of {repeats} rounds of {iterations} steps:")  # fmt: skip
    rates = {}
    for name, times in seconds.items():
        rates[name] = batch * iterations / statistics.median(times)
        print(f"  {name:16s} {rates[name]:8.1f} images/s")
    print(f"  EMAU costs {rates['tiny, no EMAU'] / rates['tiny EMANet']:.2f}x the time per image "
          "of the network without it")  # fmt: skip


def bench_gpu(iterations):
    if not torch.cuda.is_available():
        print("GPU section skipped: torch sees no CUDA device.")
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    batch, side = 8, 513
    print(f"GPU: {torch.cuda.get_device_name(device)}, EMANet-ResNet-101, batch {batch}, "
          f"{side}x{side}, {iterations} timed SGD steps after warm-up:")  # fmt: skip
    images = torch.randn(batch, 3, side, side, device=device)
    labels = torch.randint(0, 21, (batch, side, side), device=device)
    for precision, dtype in (("float32/TF32", None), ("bfloat16 autocast", torch.bfloat16)):
        for compiled in (False, True):
            torch.manual_seed(0)
            model = emanet_resnet101(21).to(device).train()
            if compiled:
                model = torch.compile(model)
            step = _step_function(model, images, labels, dtype)
            torch.cuda.reset_peak_memory_stats(device)
            warm = time.perf_counter()
            for _ in range(3):  # includes compilation for torch.compile
                step()
            torch.cuda.synchronize(device)
            warm = time.perf_counter() - warm
            seconds = _time(step, iterations, torch.cuda.synchronize)
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            label = f"{precision}, {'torch.compile' if compiled else 'eager'}"
            print(f"  {label:36s} {batch * iterations / seconds:7.1f} images/s   "
                  f"peak {peak:5.1f} GiB   warm-up {warm:5.1f} s")  # fmt: skip
            del model, step
            torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="CPU rounds (median reported)")
    parser.add_argument("--iterations", type=int, default=5, help="CPU steps per round")
    parser.add_argument("--gpu-iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    section = parser.add_mutually_exclusive_group()
    section.add_argument("--cpu-only", action="store_true")
    section.add_argument("--gpu-only", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    if not args.gpu_only:
        bench_cpu(args.repeats, args.iterations, args.threads)
    if not args.cpu_only:
        bench_gpu(args.gpu_iterations)


if __name__ == "__main__":
    main()
