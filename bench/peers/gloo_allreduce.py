#!/usr/bin/env python3
"""The peer figure for `tether bench allreduce`: PyTorch's gloo all_reduce, one process per rank over
loopback tcp, float32, median over iterations of the slowest rank's time (as tether reports it).

    python3 bench/peers/gloo_allreduce.py --ranks 2 --size 100MB [--iterations 10] [--dtype f16]
"""
import argparse, json, os, statistics, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def parse_bytes(text):
    for suffix, scale in (("KiB", 1024), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(text)

def timed_all_reduces(size, world, warmup, iterations, dtype="f32"):
    """Seconds of each timed all_reduce of `size` bytes of float32, each after a barrier, averaged as
    tether's --average does (in an initialized process group). dtype f16: as DDP's fp16_compress_hook
    does it, the tensor cast to half (and divided) before the all_reduce and copied back after, all
    timed; bf16 likewise."""
    x = torch.ones(parse_bytes(size) // 4, dtype=torch.float32)
    half = {"f16": torch.float16, "bf16": torch.bfloat16}.get(dtype)
    seconds = []
    for i in range(warmup + iterations):
        dist.barrier()
        t = time.perf_counter()
        if half is None:
            dist.all_reduce(x)
            x.div_(world)
        else:
            compressed = x.to(half).div_(world)
            dist.all_reduce(compressed)
            x.copy_(compressed)
        if i >= warmup:
            seconds.append(time.perf_counter() - t)
    return seconds

def rank_main(rank, args, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ranks)
    out[rank] = timed_all_reduces(args.size, args.ranks, args.warmup, args.iterations, args.dtype)
    dist.destroy_process_group()

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--size", default="100MB")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    args = p.parse_args()
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    out = mp.Manager().dict()
    mp.spawn(rank_main, args=(args, port, out), nprocs=args.ranks)
    times = [max(out[r][i] for r in range(args.ranks)) for i in range(args.iterations)]
    t = statistics.median(times)
    size = parse_bytes(args.size)
    busbw = size / t * 2 * (args.ranks - 1) / args.ranks / 1e9
    print(json.dumps({"peer": f"torch {torch.__version__} gloo", "dtype": args.dtype, "ranks": args.ranks, "bytes": size,
                      "median_ms": t * 1000, "busbw_gbps": busbw}))
