#!/usr/bin/env python
"""Write the 8x8 UCI digits that scikit-learn ships (1,797 images, no download)
as HDF5 files for the digits example's HDF5Data layers.

    python models/digits/make_data.py            # -> models/digits/data/
    python models/digits/make_data.py --out DIR

Writes into the output folder (created if needed):

* ``train.h5`` (1,347 images) and ``test.h5`` (450 images), each with the
  datasets ``data`` (N, 1, 8, 8) float32, pixels scaled from 0..16 to [0, 1],
  and ``label`` (N,) float32, the digit 0..9;
* ``train.txt`` / ``test.txt``: the HDF5Data source lists (one file name a line,
  resolved next to the list).

The split is a fixed random permutation (``--seed``, default 0), stratified so
that each digit has the same share in both sets.  The files are generated, not
committed (``models/digits/data/`` is in .gitignore); the solver also writes its
snapshots there.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
N_TEST = 450


def split(labels, n_test, seed):
    """Indices (train, test): a stratified split with ``n_test`` test rows, each class
    contributing in proportion to its size (largest remainders fill the rest)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * n_test / len(labels)
    take = np.floor(share).astype(int)
    extra = np.argsort(-(share - take), kind="stable")[:n_test - take.sum()]
    take[extra] += 1
    train, test = [], []
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:k])
        train.append(idx[k:])
    train, test = np.concatenate(train), np.concatenate(test)
    return rng.permutation(train), rng.permutation(test)


def write_h5(path, data, label):
    import h5py
    tmp = path + ".part"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "data"),
                    help="output folder (default: data/ beside this script)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    args = ap.parse_args(argv)
    try:
        from sklearn.datasets import load_digits
        import h5py  # noqa: F401
    except ImportError as e:
        sys.exit(f"make_data.py needs scikit-learn and h5py ({e}): pip install -e \".[examples]\"")

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]   # (N, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.float32)
    train, test = split(digits.target, N_TEST, args.seed)

    os.makedirs(args.out, exist_ok=True)
    for name, idx in (("train", train), ("test", test)):
        h5 = os.path.join(args.out, f"{name}.h5")
        write_h5(h5, images[idx], labels[idx])
        with open(os.path.join(args.out, f"{name}.txt"), "w") as f:
            f.write(f"{name}.h5\n")
        print(f"wrote {h5}: {len(idx)} images {images.shape[1:]}, labels 0..9")


if __name__ == "__main__":
    main()
