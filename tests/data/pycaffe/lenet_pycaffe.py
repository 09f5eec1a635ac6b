"""An ordinary pycaffe script (nothing netrun-specific): run it with
``netrun pycaffe lenet_pycaffe.py OUTDIR`` from any folder.

NetSpec LeNet on HDF5 data made from the bundled digit samples, trained with
SGDSolver.step and a Python loss layer next to the usual softmax loss; net surgery
turning the classifier fully convolutional; Transformer preprocessing; and
Classifier.predict with the bundled trained digits model.  Results go to
OUTDIR/results.json and OUTDIR/arrays.npz.
"""
import json
import os
import sys

import h5py
import numpy as np

import caffe
from caffe import layers as L
from caffe import params as P
from caffe.proto import caffe_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "..", "..", "..", "models", "digits")
out = os.path.abspath(sys.argv[1])
os.makedirs(out, exist_ok=True)
os.chdir(out)                       # snapshots go to the working folder, as in Caffe
caffe.set_mode_cpu()
caffe.set_random_seed(3)
results = {}

# -- data: the ten sample digits and their one-pixel shifts, as HDF5 ----------------------------
images = [caffe.io.load_image(os.path.join(DIGITS, "samples", f"digit_{d}.png"), color=False)
          for d in range(10)]
base = np.stack([im.transpose(2, 0, 1) for im in images])          # (10, 1, 8, 8) in [0, 1]
data, labels = [], []
for dy, dx in ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)):
    data.append(np.roll(base, (dy, dx), axis=(2, 3)))
    labels.append(np.arange(10))
data = np.concatenate(data).astype(np.float32)
labels = np.concatenate(labels).astype(np.float32)
onehot = np.eye(10, dtype=np.float32)[labels.astype(int)]
with h5py.File("train.h5", "w") as f:
    f["data"], f["label"], f["onehot"] = data, labels, onehot
with open("train.txt", "w") as f:
    f.write(os.path.abspath("train.h5") + "\n")


# -- NetSpec LeNet --------------------------------------------------------------------------
def lenet(source, batch_size):
    n = caffe.NetSpec()
    n.data, n.label, n.onehot = L.HDF5Data(batch_size=batch_size, source=source, ntop=3)
    n.conv1 = L.Convolution(n.data, num_output=16, kernel_size=3, pad=1,
                            weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc = L.InnerProduct(n.pool1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    n.eucl = L.Python(n.fc, n.onehot, loss_weight=1,
                      python_param=dict(module="pyloss", layer="EuclideanLossLayer",
                                        param_str="0.5"))
    return n.to_proto()


with open("train.prototxt", "w") as f:
    f.write(str(lenet("train.txt", 10)))
solver_param = caffe_pb2.SolverParameter(net="train.prototxt", base_lr=0.05, momentum=0.9,
                                         lr_policy="fixed", max_iter=100, display=0,
                                         snapshot_prefix="lenet")
with open("solver.prototxt", "w") as f:
    f.write(str(solver_param))

solver = caffe.SGDSolver("solver.prototxt")
net = solver.net
results["layers"] = list(net._layer_names)
results["outputs"] = net.outputs
losses = []
for it in range(100):
    solver.step(1)
    losses.append(float(net.blobs["loss"].data))
results["iter"] = solver.iter
results["softmax_loss_first"], results["softmax_loss_last"] = losses[0], losses[-1]
solver.snapshot()
results["snapshot_files"] = sorted(p for p in os.listdir(".") if p.startswith("lenet_iter_"))

# the Python loss on the current batch (checked by the test against numpy)
net.forward()
arrays = {"fc": net.blobs["fc"].data.copy(), "onehot": net.blobs["onehot"].data.copy(),
          "eucl": net.blobs["eucl"].data.copy()}
net.save("trained.caffemodel")

# -- net surgery: the classifier made fully convolutional --------------------------------
def deploy(fully_conv, height, width):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, height, width]))
    n.conv1 = L.Convolution(n.data, num_output=16, kernel_size=3, pad=1)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    if fully_conv:
        n["fc-conv"] = L.Convolution(n.pool1, num_output=10, kernel_size=4)
    else:
        n.fc = L.InnerProduct(n.pool1, num_output=10)
    return n.to_proto()


for name, proto in (("fc.prototxt", deploy(False, 8, 8)), ("full_conv.prototxt", deploy(True, 8, 24))):
    with open(name, "w") as f:
        f.write(str(proto))
fc_net = caffe.Net("fc.prototxt", "trained.caffemodel", caffe.TEST)
conv_net = caffe.Net("full_conv.prototxt", caffe.TEST, weights="trained.caffemodel")
conv_net.params["fc-conv"][0].data.flat = fc_net.params["fc"][0].data.flat
conv_net.params["fc-conv"][1].data[...] = fc_net.params["fc"][1].data
canvas = np.zeros((1, 1, 8, 24), np.float32)
canvas[0, 0, :, 0:8], canvas[0, 0, :, 16:24] = base[3, 0], base[8, 0]
conv_out = conv_net.forward(data=canvas)["fc-conv"]
fc_3 = fc_net.forward(data=base[3:4])["fc"].copy()
fc_8 = fc_net.forward(data=base[8:9])["fc"].copy()
results["conv_out_shape"] = list(conv_out.shape)
results["surgery_max_diff"] = float(max(np.abs(conv_out[0, :, 0, 0] - fc_3[0]).max(),
                                        np.abs(conv_out[0, :, 0, 8] - fc_8[0]).max()))

# -- Transformer preprocessing of a real image ---------------------------------------------
img = caffe.io.load_image(os.path.join(DIGITS, "samples", "digit_7.png"), color=False)
big = np.kron(img[..., 0], np.ones((2, 2), np.float32))[..., None]   # 16 x 16, each pixel 2 x 2
t = caffe.io.Transformer({"data": (1, 1, 8, 8)})
t.set_transpose("data", (2, 0, 1))
t.set_raw_scale("data", 255.0)
t.set_mean("data", np.array([128.0]))
t.set_input_scale("data", 1 / 255.0)
pre = t.preprocess("data", big)
arrays["preprocessed"] = pre
arrays["deprocessed"] = t.deprocess("data", pre)

# -- Classifier with the bundled trained digits model ---------------------------------------
clf = caffe.Classifier(os.path.join(DIGITS, "digits_deploy.prototxt"),
                       os.path.join(DIGITS, "digits.caffemodel"), image_dims=(8, 8))
probs = clf.predict(images, oversample=False)
arrays["probs"] = probs
results["predicted"] = [int(i) for i in probs.argmax(1)]
over = caffe.Classifier(os.path.join(DIGITS, "digits_deploy.prototxt"),
                        os.path.join(DIGITS, "digits.caffemodel"), image_dims=(10, 10))
arrays["probs_oversampled"] = over.predict(images)

np.savez("arrays.npz", **arrays)
with open("results.json", "w") as f:
    json.dump(results, f, indent=1)
print("done:", json.dumps(results))
