# ONNX Runtime's inference throughput on an exported model: samples/s over the samples of an .npz
# (x, as float32 / 255 when uint8) or Fashion-MNIST's test images (fashion-mnist), batch 256, intra-op
# threads THREADS, median of 5 passes after a warm-up. Usage: ort_predict.py MODEL.onnx DATA THREADS
import gzip, sys, time
import numpy as np, onnxruntime as ort
model, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions(); options.intra_op_num_threads = threads; options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
if data == "fashion-mnist":
    raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255
else:
    x = np.load(data)["x"]
    x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
def run():
    t = time.perf_counter()
    for i in range(0, len(x), 256): session.run(["probabilities"], {"input": x[i:i + 256]})
    return len(x) / (time.perf_counter() - t)
run()
print(round(sorted(run() for _ in range(5))[2]))
