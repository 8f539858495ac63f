#!/usr/bin/env python3
"""The peer figure for `tether bench train --model lm-tied`: PyTorch's word_language_model on the CPU
(embedding -> dropout -> nn.LSTM -> dropout -> decoder tied to the embedding), truncated BPTT with the
hidden state carried and detached, SGD with gradient clipping, median tokens/s over runs.

    python3 bench/peers/torch_lm.py [--no-weight-norm] [--untied] [--vocabulary 10000] [--size 256]

Tokens are drawn from the fortunes corpus when present (the speed does not depend on which words).
"""
import argparse, json
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch_models import median_rate

p = argparse.ArgumentParser()
p.add_argument("--vocabulary", type=int, default=10000)
p.add_argument("--size", type=int, default=256)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--bptt", type=int, default=35)
p.add_argument("--batch", type=int, default=20)
p.add_argument("--dropout", type=float, default=0.2)
p.add_argument("--weight-norm", action=argparse.BooleanOptionalAction, default=True)
p.add_argument("--untied", action="store_true")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--steps", type=int, default=20)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        v, d = args.vocabulary, args.size
        self.drop = nn.Dropout(args.dropout)
        self.encoder = nn.Embedding(v, d)
        self.rnn = nn.LSTM(d, d, args.layers, dropout=args.dropout if args.layers > 1 else 0)
        if args.weight_norm:
            for l in range(args.layers):
                weight_norm(self.rnn, f"weight_ih_l{l}")
                weight_norm(self.rnn, f"weight_hh_l{l}")
        self.decoder = nn.Linear(d, v)
        if not args.untied:
            self.decoder.weight = self.encoder.weight

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)).view(-1, args.vocabulary), hidden

model = RNNModel()
criterion = nn.CrossEntropyLoss()
tokens = torch.randint(args.vocabulary, (args.batch * args.bptt * (args.steps + 1) + 1,))
data = tokens[: (len(tokens) // args.batch) * args.batch].view(args.batch, -1).t().contiguous()  # (L, B)
hidden = tuple(torch.zeros(args.layers, args.batch, args.size) for _ in range(2))
lr = 20.0

def step(i):
    global hidden
    s = (i % args.steps) * args.bptt
    x, y = data[s : s + args.bptt], data[s + 1 : s + 1 + args.bptt].reshape(-1)
    hidden = tuple(h.detach() for h in hidden)
    model.zero_grad()
    out, hidden = model(x, hidden)
    loss = criterion(out, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    with torch.no_grad():
        for p_ in model.parameters():
            p_.add_(p_.grad, alpha=-lr)
    return x.numel()

model.train()
rate, rates = median_rate(step, args.steps, args.repeats)
print(json.dumps({"peer": f"torch {torch.__version__}", "model": "lm-tied", "weight_norm": args.weight_norm, "untied": args.untied,
                  "tokens_per_sec": rate, "runs": rates,
                  "parameters": sum(p_.numel() for p_ in model.parameters())}))
