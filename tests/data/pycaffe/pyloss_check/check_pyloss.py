"""A Python loss layer (../pyloss.py, loss_weight 3) in a net: forward, backward and three
SGD steps.  Run from this folder: ``python check_pyloss.py OUT.npy``.  real_pycaffe.npy is
what real pycaffe (BVLC Caffe 1.0, the caffe-ref build) wrote with w.caffemodel;
tests/test_pycaffe_script.py runs it through ``netrun pycaffe`` and compares."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # pyloss
import caffe  # noqa: E402

rng = np.random.RandomState(0)
x = rng.randn(4, 3).astype(np.float32)
t = rng.randn(4, 2).astype(np.float32)
net = caffe.Net("net.prototxt", caffe.TRAIN, weights="w.caffemodel")
net.blobs["x"].data[...] = x
net.blobs["t"].data[...] = t
out = net.forward()
net.backward()
res = [np.ravel(out["eucl"]), net.blobs["ip"].diff.ravel(), net.params["ip"][0].diff.ravel(),
       net.blobs["x"].diff.ravel()]
solver = caffe.SGDSolver("solver.prototxt")
solver.net.copy_from("w.caffemodel")
solver.net.blobs["x"].data[...] = x
solver.net.blobs["t"].data[...] = t
solver.step(3)
res += [solver.net.params["ip"][0].data.ravel(), solver.net.params["ip"][1].data.ravel()]
np.save(sys.argv[1], np.concatenate(res))
