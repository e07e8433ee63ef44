"""Time one full-batch gradient at a given shape and memory budget (and profile it).

    python -m benchmarks.profile_step --shape ml25m --rank 64 --device cuda --max-memory-mb 64,256,1024
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from benchmarks import autofact_side as af
from benchmarks.datasets import synthetic_shape


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="ml25m")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-memory-mb", default="64,256")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from autofact.objective import Objective

    data = synthetic_shape(args.shape, scale=args.scale)
    train, _ = af.scale_prepare(data)
    del data
    gc.collect()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for mb in [int(x) for x in args.max_memory_mb.split(",")]:
        obj = Objective(train, bias=True, beta=25.0, device=args.device, max_memory=mb * 2**20)
        params = obj.init_params(args.rank)
        times = []
        for _ in range(4):
            for p in params.values():
                p.grad = None
            sync()
            t = time.perf_counter()
            obj.value_and_grad(params)
            sync()
            times.append(time.perf_counter() - t)
        print(f"max_memory {mb} MB: {len(obj.patterns)} blocks, gradient {min(times[1:]):.4f} s "
              f"(first {times[0]:.3f} s)", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + (
                [ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
            with profile(activities=acts) as prof:
                for p in params.values():
                    p.grad = None
                obj.value_and_grad(params)
                sync()
            key = "self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=14))
        del obj, params
        gc.collect()


if __name__ == "__main__":
    main()
