"""The Fashion-MNIST models of Tether's image families in PyTorch (weight norm through
torch.nn.utils.parametrizations.weight_norm), shared by the peer scripts."""
import gzip, statistics, time
import numpy as np
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

def load_images(path="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
    with gzip.open(path) as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255

def load_labels(path="/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)

def model(name):
    wn = (lambda m: weight_norm(m)) if name != "mlp" else (lambda m: m)
    if name in ("mlp", "mlp-wn"):
        return nn.Sequential(nn.Flatten(), wn(nn.Linear(784, 256)), nn.ReLU(), wn(nn.Linear(256, 256)), nn.ReLU(), wn(nn.Linear(256, 10)))
    return nn.Sequential(wn(nn.Conv2d(1, 32, 5, padding=2)), nn.ReLU(), nn.MaxPool2d(2),
                         wn(nn.Conv2d(32, 64, 5, padding=2)), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         wn(nn.Linear(64 * 7 * 7, 256)), nn.ReLU(), wn(nn.Linear(256, 10)))



def median_rate(step, steps, repeats, warmup=3):
    """`warmup` untimed calls, then `repeats` timed runs of `steps` calls of step(i), which returns the
    items (samples, tokens) it processed; returns (median items/s, every run's items/s)."""
    for i in range(warmup):
        step(i)
    rates = []
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for i in range(steps):
            n += step(i)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), rates


if __name__ == "__main__":
    # python3 torch_models.py export MODEL FILE.onnx: the module as torch.onnx.export writes it for Tether
    import sys, warnings, torch
    _, command, name, path = sys.argv
    assert command == "export", __doc__
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    torch.onnx.export(model(name).eval(), (torch.zeros(1, 1, 28, 28),), path, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
                      opset_version=17, dynamo=False, do_constant_folding=False)
