#!/usr/bin/env python3
"""The peer figure for `tether simulate`: PyTorch DistributedDataParallel over gloo on loopback, N
processes of one thread each, batch 64 per worker, Adam, Fashion-MNIST (DistributedSampler), one epoch;
prints the epoch's samples/s (all workers together).

    python3 bench/peers/torch_ddp.py --model mlp-wn [--workers 2] [--epochs 1]
"""
import argparse, json, os, time
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, DistributedSampler
from torch_models import load_images, load_labels, model

def worker(rank, args, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.workers)
    torch.manual_seed(0)
    data = TensorDataset(torch.from_numpy(load_images()), torch.from_numpy(load_labels()))
    sampler = DistributedSampler(data, num_replicas=args.workers, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler)
    m = nn.parallel.DistributedDataParallel(model(args.model))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        dist.barrier()
        start, n = time.perf_counter(), 0
        for x, y in loader:
            opt.zero_grad()
            loss_fn(m(x), y).backward()
            opt.step()
            n += len(y)
        dist.barrier()
        seconds = time.perf_counter() - start
        if rank == 0:
            out.put(n * args.workers / seconds)
    dist.destroy_process_group()

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mlp-wn", choices=["mlp", "mlp-wn", "cnn-wn"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--port", type=int, default=29517)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.spawn(worker, args=(args, args.port, out), nprocs=args.workers, join=True)
    rates = [out.get() for _ in range(args.epochs)]
    print(json.dumps({"peer": f"torch {torch.__version__} DDP gloo", "model": args.model, "workers": args.workers, "batch": args.batch,
                      "samples_per_sec": rates[-1], "epochs": rates}))
