#!/usr/bin/env python3
"""One rank of PyTorch DistributedDataParallel (gloo) with a communication hook, for runs where each
rank lives on its own (emulated) host: Fashion-MNIST, batch 64 per rank, Adam (lr 1e-3), one thread,
the training set dealt by DistributedSampler, --steps steps. Hooks: none, fp16 (fp16_compress_hook),
powersgd (powerSGD_hook with error feedback and warm start, --rank R, from --start-step S).
Rank 0 prints one JSON line: the median samples/s (all ranks) of the 10-step windows after the first,
and the held-out accuracy at the end.

    python3 bench/peers/torch_ddp_rank.py --rank R --world N --master tcp://HOST:PORT --model mlp-wn \
        --hook powersgd --powersgd-rank 4 --steps 234
"""
import argparse, json, os, statistics, time
import torch, torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, DistributedSampler
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook as powerSGD
from torch_models import load_images, load_labels, model

p = argparse.ArgumentParser()
p.add_argument("--rank", type=int, required=True)
p.add_argument("--world", type=int, required=True)
p.add_argument("--master", required=True)
p.add_argument("--model", default="mlp-wn", choices=["mlp", "mlp-wn", "cnn-wn"])
p.add_argument("--hook", default="none", choices=["none", "fp16", "powersgd"])
p.add_argument("--powersgd-rank", type=int, default=4)
p.add_argument("--start-step", type=int, default=2)
p.add_argument("--steps", type=int, default=100)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--train-limit", type=int, default=None)
args = p.parse_args()
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=args.master, rank=args.rank, world_size=args.world)
torch.manual_seed(0)
images, labels = torch.from_numpy(load_images()), torch.from_numpy(load_labels())
if args.train_limit:
    images, labels = images[:args.train_limit], labels[:args.train_limit]
data = TensorDataset(images, labels)
sampler = DistributedSampler(data, num_replicas=args.world, rank=args.rank, shuffle=True, seed=0)
# PowerSGD's hook issues its P all-reduce from the callback of the bucket's first one; with gloo and
# more than one bucket those callbacks run on different threads and the ranks issue them in different
# orders (a hang, or "Received data size doesn't match expected size"). One bucket avoids it: DDP's
# buckets are rebuilt by bucket_cap_mb after the first step, so PowerSGD starts at step 2 or later.
m = nn.parallel.DistributedDataParallel(model(args.model), bucket_cap_mb=256 if args.hook == "powersgd" else 25)
if args.hook == "fp16":
    m.register_comm_hook(None, default_hooks.fp16_compress_hook)
elif args.hook == "powersgd":
    state = powerSGD.PowerSGDState(process_group=None, matrix_approximation_rank=args.powersgd_rank,
                                   start_powerSGD_iter=args.start_step, use_error_feedback=True, warm_start=True)
    m.register_comm_hook(state, powerSGD.powerSGD_hook)
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
step, marks, epoch = 0, [], 0
dist.barrier()
while step < args.steps:
    sampler.set_epoch(epoch)
    for x, y in DataLoader(data, batch_size=args.batch, sampler=sampler):
        opt.zero_grad()
        loss_fn(m(x), y).backward()
        opt.step()
        step += 1
        if step % 10 == 0:
            marks.append(time.perf_counter())
        if step == args.steps:
            break
    epoch += 1
rates = [10 * args.batch * args.world / (b - a) for a, b in zip(marks[1:], marks[2:])]
dist.barrier()
if args.rank == 0:
    test_x = torch.from_numpy(load_images("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"))
    test_y = torch.from_numpy(load_labels("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"))
    with torch.no_grad():
        accuracy = (m.module(test_x).argmax(1) == test_y).float().mean().item()
    print(json.dumps({"who": f"torch {torch.__version__} DDP gloo", "model": args.model, "hook": args.hook,
                      "powersgd_rank": args.powersgd_rank if args.hook == "powersgd" else None, "workers": args.world, "steps": step,
                      "samples_per_sec": round(statistics.median(rates), 1) if rates else None, "test_accuracy": round(accuracy, 4)}), flush=True)
dist.barrier()
# PowerSGD's hook leaves gloo callback threads behind; tearing the process group down then aborts
# ("terminate called without an active exception"): leave without it, every rank past the barrier
os._exit(0)
