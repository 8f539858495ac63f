#!/usr/bin/env python3
"""A network defined in PyTorch, trained on a Tether cluster, and back: in ONNX Runtime, or in the same
PyTorch module. Needs torch, onnx, onnxruntime, numpy and safetensors (pip), and Fashion-MNIST
(Debian's dataset-fashion-mnist).

    python3 examples/pytorch_round_trip.py export net.onnx             # the network, untrained, as ONNX
    tether simulate --workers 4 --model net.onnx --run-dir run         # trained from its initial weights
    tether export --onnx trained.onnx --checkpoint run/checkpoint.safetensors
    python3 examples/pytorch_round_trip.py onnxruntime trained.onnx    # test accuracy in ONNX Runtime
    python3 examples/pytorch_round_trip.py load run/checkpoint.safetensors   # ... in the PyTorch module

Each of the last two prints the test set's accuracy; `tether eval --checkpoint run/checkpoint.safetensors`
gives Tether's.
"""
import gzip, sys, warnings
import numpy as np
import torch
from torch import nn

weight_norm = torch.nn.utils.parametrizations.weight_norm
TEST = "/usr/share/datasets/fashion-mnist/t10k-{}-idx{}-ubyte.gz"


class Net(nn.Module):
    """A weight-normalized ConvNet for 28x28 grey images, 10 classes (any Sequential-shaped network of
    the operators `tether models show FILE.onnx` reads will do)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            weight_norm(nn.Conv2d(1, 16, 5, padding=2)), nn.ReLU(), nn.MaxPool2d(2),
            weight_norm(nn.Conv2d(16, 32, 5, padding=2)), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), weight_norm(nn.Linear(32 * 7 * 7, 128)), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.layers(x)


def export(path):
    """torch.onnx.export as Tether reads it: opset 17 or later, a batch of any size, and weight norm kept
    as g and v (constant folding would fold them into one weight)."""
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 28, 28),), path, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False, do_constant_folding=False)
    print(f"wrote {path}")


def test_set():
    with gzip.open(TEST.format("images", 3)) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
    with gzip.open(TEST.format("labels", 1)) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def onnxruntime(path):
    import onnxruntime as ort
    x, y = test_set()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    probabilities = session.run(["probabilities"], {"input": x})[0]
    print(f"ONNX Runtime: test accuracy {(probabilities.argmax(1) == y).mean():.4f}")


def load(checkpoint):
    """Tether's checkpoint into a fresh Net. Tether numbers the graph's operators as its layers
    (`layers.N.weight`, weight norm's g and v as `weight_g` and `weight_v`); the ones with parameters
    come in the module's order. A cluster's checkpoint holds each buffer (batch norm's statistics) for
    every replica, rank 0's first: PyTorch takes rank 0's, as DDP does."""
    from safetensors.numpy import load_file
    trained = load_file(checkpoint)
    net = Net()
    ours = sorted({int(k.split(".")[1]) for k in trained if k.startswith("layers.")})
    theirs = [m for m in net.layers if len(m.state_dict()) > 0]
    assert len(ours) == len(theirs), f"{checkpoint}: layers {ours} for {len(theirs)} modules with parameters"
    names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    for index, module in zip(ours, theirs):
        state = module.state_dict()
        for name, t in state.items():
            if name == "num_batches_tracked":
                continue
            value = trained[f"layers.{index}.{names.get(name, name)}"].reshape(-1)[:t.numel()]
            state[name] = torch.from_numpy(value.copy()).reshape(t.shape)
        module.load_state_dict(state)
    x, y = test_set()
    with torch.no_grad():
        predicted = net.eval()(torch.from_numpy(x)).argmax(1).numpy()
    print(f"PyTorch: test accuracy {(predicted == y).mean():.4f}")


if __name__ == "__main__":
    commands = {"export": export, "onnxruntime": onnxruntime, "load": load}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2])
