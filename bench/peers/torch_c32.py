# bench/specs/c32.yaml's network in PyTorch (weight_norm, Adam, batch 64): training samples/s on the
# given .npz (x uint8 (N, 3, 32, 32), y), median of 5 runs of 40 steps. Usage: torch_c32.py DATA.npz THREADS
import sys, time, warnings
import numpy as np, torch
from torch import nn
warnings.simplefilter("ignore")
data, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
wn = torch.nn.utils.weight_norm
net = nn.Sequential(
    wn(nn.Conv2d(3, 32, 3, padding=1)), nn.ReLU(), nn.MaxPool2d(2), wn(nn.Conv2d(32, 64, 3, padding=1)), nn.ReLU(), nn.MaxPool2d(2),
    wn(nn.Conv2d(64, 128, 3, padding=1)), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), wn(nn.Linear(2048, 256)), nn.ReLU(),
    wn(nn.Linear(256, 10)))
opt = torch.optim.Adam(net.parameters(), 1e-3)
d = np.load(data)
x, y = torch.from_numpy(d["x"].astype(np.float32) / 255), torch.from_numpy(d["y"])
def run(steps=40):
    t = time.perf_counter()
    for s in range(steps):
        i = (s * 64) % (len(y) - 64)
        opt.zero_grad(); loss = nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]); loss.backward(); opt.step()
    return steps * 64 / (time.perf_counter() - t)
run(5)
print(round(sorted(run() for _ in range(5))[2]))
