#!/usr/bin/env python3
"""The peer figure for `tether bench train`: PyTorch on the CPU, the same models (weight norm through
torch.nn.utils.parametrizations.weight_norm), Fashion-MNIST batches, Adam, median samples/s over runs.

    python3 bench/peers/torch_train.py --model cnn-wn [--batch 64] [--threads 1]
"""
import argparse, json
import torch
from torch import nn

from torch_models import load_images, load_labels, median_rate, model

p = argparse.ArgumentParser()
p.add_argument("--model", default="mlp-wn", choices=["mlp", "mlp-wn", "cnn-wn"])
p.add_argument("--batch", type=int, default=64)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--steps", type=int)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
x, y = torch.from_numpy(load_images()), torch.from_numpy(load_labels())
m = model(args.model)
opt = torch.optim.Adam(m.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
steps = args.steps or max(10, 20000 // (args.batch * (20 if args.model.startswith("cnn") else 1)))
perm = torch.randperm(len(x))
cursor = 0
def step(_):
    global cursor
    if (cursor + 1) * args.batch > len(x):
        cursor = 0
    idx = perm[cursor * args.batch:(cursor + 1) * args.batch]
    cursor += 1
    opt.zero_grad()
    loss_fn(m(x[idx]), y[idx]).backward()
    opt.step()
    return args.batch
rate, rates = median_rate(step, steps, args.repeats, warmup=5)
print(json.dumps({"peer": f"torch {torch.__version__}", "model": args.model, "batch": args.batch, "threads": args.threads,
                  "samples_per_sec": rate, "runs": rates}))
