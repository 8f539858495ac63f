#!/usr/bin/env python3
"""The peer figure for `tether bench train --model wide-deep`: the same wide & deep model in PyTorch on
the CPU. Wide: an EmbeddingBag (2^20, 1, sum, sparse) over each row's 26 hashed values and 25 hashed
adjacent crosses; deep: a sparse Embedding (26 x 100k, 16) per field, concatenated with 13 numbers, into
a weight-normalized MLP 429-256-128-64-1; logit = wide + deep + b; BCE-with-logits; torch.optim.Adagrad
(sparse gradients for both tables), batch 512, median examples/s over runs.

    python3 bench/peers/torch_wide_deep.py [--buckets 100000] [--batch 512] [--threads 1]

Rows are random Criteo-shaped ids (Zipf-like), hashed once up front: the timed loop is the step alone,
which favours the peer (Tether hashes each batch inside its step).
"""
import argparse, json
import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch_models import median_rate

p = argparse.ArgumentParser()
p.add_argument("--fields", type=int, default=26)
p.add_argument("--numeric", type=int, default=13)
p.add_argument("--buckets", type=int, default=100_000)
p.add_argument("--wide-buckets", type=int, default=1 << 20)
p.add_argument("--embedding", type=int, default=16)
p.add_argument("--batch", type=int, default=512)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--steps", type=int, default=40)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
rng = np.random.default_rng(0)
F, M, E = args.fields, args.numeric, args.embedding
rows = args.batch * args.steps
values = (rng.zipf(1.2, size=(rows, F)) % 20000).astype(np.int64)
deep_ids = torch.from_numpy((values * 2654435761 % args.buckets) + np.arange(F) * args.buckets)
crosses = (values[:, :-1] * 1000003 + values[:, 1:]) * 40503
wide_ids = torch.from_numpy(np.concatenate([values * 2246822519 + np.arange(F), crosses], axis=1) % args.wide_buckets)
numbers = torch.randn(rows, M)
labels = torch.from_numpy((rng.random(rows) < 0.25).astype(np.float32))

class WideDeep(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = nn.EmbeddingBag(args.wide_buckets, 1, mode="sum", sparse=True)
        self.embedding = nn.Embedding(F * args.buckets, E, sparse=True)
        widths = [F * E + M, 256, 128, 64]
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [weight_norm(nn.Linear(a, b)), nn.ReLU()]
        layers.append(weight_norm(nn.Linear(64, 1, bias=False)))
        self.mlp = nn.Sequential(*layers)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, wide_ids, deep_ids, numbers):
        deep_in = torch.cat([self.embedding(deep_ids).flatten(1), numbers], dim=1)
        return self.wide(wide_ids).squeeze(1) + self.mlp(deep_in).squeeze(1) + self.bias

model = WideDeep()
opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
loss_fn = nn.BCEWithLogitsLoss()

def step(i):
    s = slice((i % args.steps) * args.batch, (i % args.steps + 1) * args.batch)
    opt.zero_grad()
    loss = loss_fn(model(wide_ids[s], deep_ids[s], numbers[s]), labels[s])
    loss.backward()
    opt.step()
    return args.batch

rate, rates = median_rate(step, args.steps, args.repeats)
print(json.dumps({"peer": f"torch {torch.__version__}", "model": "wide-deep", "examples_per_sec": rate, "runs": rates,
                  "parameters": sum(p_.numel() for p_ in model.parameters())}))
