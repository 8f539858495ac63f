#!/usr/bin/env python3
"""One rank of PyTorch's gloo all_reduce, for runs where each rank lives on its own (emulated) host.
Prints {"seconds": [...]} (this rank's times); bench/netns-allreduce takes the slowest rank per iteration.

    python3 bench/peers/gloo_rank.py --rank R --world N --master tcp://HOST:PORT --size 64MiB
"""
import argparse, json
import torch
import torch.distributed as dist
from gloo_allreduce import timed_all_reduces

p = argparse.ArgumentParser()
p.add_argument("--rank", type=int, required=True)
p.add_argument("--world", type=int, required=True)
p.add_argument("--master", required=True)
p.add_argument("--size", default="64MiB")
p.add_argument("--iterations", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
args = p.parse_args()
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=args.master, rank=args.rank, world_size=args.world)
seconds = timed_all_reduces(args.size, args.world, args.warmup, args.iterations, args.dtype)
dist.destroy_process_group()
print(json.dumps({"peer": f"torch {torch.__version__} gloo", "seconds": seconds}))
