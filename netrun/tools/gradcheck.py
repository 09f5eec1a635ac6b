"""Numerical gradient check of layers, with Caffe's GradientChecker semantics.

Each chosen layer is checked **in isolation**: a fresh instance of the layer is
built from its LayerParameter (float64, bottoms and tops of its own, never in
place), given the net's parameter values and, as bottoms, the values its
bottoms had when the net ran forward.  Then, as Caffe's checker does:

* objective (default, Caffe's ``CheckGradient``/``CheckGradientSingle`` with
  ``top_id = -1``): ``E = 1/2 * sum over all tops of sum(top^2)``, so the top
  diffs for the analytic pass are the top data themselves;
* ``exhaustive`` (Caffe's ``CheckGradientExhaustive``): one objective per top
  element, ``E_ij = 2 * top[i][j]`` (top diff 2 at that element, 0 elsewhere),
  every one checked against every feature;
* analytic gradient: one Forward, then Backward with ``propagate_down`` set for
  the checked bottoms; parameter diffs start at zero;
* numeric gradient of feature ``x``:  ``(E(x + h) - E(x - h)) / (2h)``, each
  forward run with the random generator reset to the seed (so Dropout draws the
  same mask every time);
* a feature is **skipped** when ``kink - kink_range <= |x| <= kink + kink_range``
  (note: ``|x|``, the absolute feature value, so the window is symmetric about 0;
  with the default ``kink_range = -1`` nothing is skipped);
* it **passes** when ``|analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1)``.

What is checked: every parameter blob (Caffe's order: parameters first, then
bottoms) except those of ``BatchNorm`` (running statistics, which Caffe never
differentiates), and every bottom that can take a gradient (the layer's
``allow_force_backward`` and the prototxt's ``propagate_down``).  Layers Caffe
gives no backward are reported and skipped.

Non-smooth points are conventions, not derivatives: ReLU's derivative at 0 is
taken as 0 (the negative slope for leaky ReLU), so a feature within ``h`` of 0
fails the check unless skipped with ``kink = 0, kink_range = 0.01`` -- exactly
the setting Caffe's own ReLU/AbsVal/PReLU tests use.  Max pooling near ties has
the same problem; use a smaller ``stepsize`` there.
"""
import numpy as np

from ..blob import Blob
from ..errors import LayerError, NetrunError
from ..layers.base import Context

NO_PARAM_GRADIENT = ("BatchNorm",)
MAX_FAILING_INDICES = 10
EXHAUSTIVE_LIMIT = 20_000_000     # top elements x features kept in memory


def _choose(count, max_features, rng):
    if max_features and count > max_features:
        return np.sort(rng.choice(count, size=max_features, replace=False))
    return np.arange(count)


def check_layer(layer, bottom_arrays, bottom_names, n_tops, stepsize=1e-2, threshold=1e-3,
                kink=0.0, kink_range=-1.0, seed=1701, exhaustive=False, max_features=0):
    """Check one layer (see the module docstring); returns a result dict.

    ``layer`` is the net's layer (its class, parameter and parameter values are
    used, never modified); ``bottom_arrays`` the values of its bottoms.
    """
    cls = type(layer)
    result = {"name": layer.name, "type": layer.type, "blobs": [], "status": "pass",
              "reason": ""}
    if not cls.has_backward:
        result.update(status="skipped", reason="no backward (as in Caffe)")
        return result
    rng = np.random.default_rng(seed)
    ctx = Context(layer.ctx.phase, np.float64, rng, layer.ctx.warn,
                  layer.ctx.allow_python_layers, layer.ctx.base_dir)
    lp = layer.param
    iso = cls(lp, ctx)
    bottoms = []
    for a in bottom_arrays:
        b = Blob(np.shape(a), np.float64)
        b.data = np.array(a, dtype=np.float64)
        bottoms.append(b)
    tops = [Blob((), np.float64) for _ in range(n_tops)]
    iso.check_blob_counts(bottoms, tops)
    iso.setup(bottoms, tops)
    iso.reshape(bottoms, tops)
    if len(iso.blobs) != len(layer.blobs):
        raise NetrunError(f"a fresh {layer.type} layer has {len(iso.blobs)} parameter blobs, "
                          f"the net's has {len(layer.blobs)}", f'layer "{layer.name}"')
    for k, (mine, theirs) in enumerate(zip(iso.blobs, layer.blobs)):
        if mine.shape != theirs.shape:
            raise NetrunError(f"parameter {k} has shape {mine.shape} in a fresh layer and "
                              f"{theirs.shape} in the net", f'layer "{layer.name}"')
        mine.data[...] = theirs.data        # in place: the layer may share this array
    check_params = layer.type not in NO_PARAM_GRADIENT
    iso.param_propagate_down = [check_params] * len(iso.blobs)
    propagate_down = []
    for j in range(len(bottoms)):
        ok = iso.allow_force_backward(j)
        if len(lp.propagate_down) > j and not lp.propagate_down[j]:
            ok = False
        propagate_down.append(ok)

    targets = []     # (kind, index, name, blob)
    if check_params:
        for k, b in enumerate(iso.blobs):
            targets.append(("param", k, f"{layer.name}/{k}", b))
    for j, b in enumerate(bottoms):
        if propagate_down[j]:
            targets.append(("bottom", j, bottom_names[j], b))
    if not targets:
        result.update(status="skipped", reason="nothing to check (no parameters, no bottom "
                                               "that takes a gradient)")
        return result

    state = rng.bit_generator.state

    def forward():
        rng.bit_generator.state = state
        iso.reshape(bottoms, tops)
        iso.forward(bottoms, tops)
        return [np.array(t.data, dtype=np.float64).ravel() for t in tops]

    def backward(top_diffs):
        # in place: a top may share its diff array with a bottom (Reshape, Flatten)
        for b in bottoms:
            b.diff[...] = 0
        for b in iso.blobs:
            b.diff[...] = 0
        for t, d in zip(tops, top_diffs):
            t.diff[...] = d.reshape(t.shape)
        iso.backward(tops, propagate_down, bottoms)
        return [np.array(blob.diff, dtype=np.float64).ravel() for _, _, _, blob in targets]

    # -- analytic -------------------------------------------------------------------
    base = forward()
    if base and all(not np.any(a) for a in base):
        result["warning"] = ("every top value is 0 (parameters from constant-0 fillers?): the check "
                             "proves little; give trained weights or fillers")
    sizes = [a.size for a in base]
    n_rows = sum(sizes)
    sample_rng = np.random.default_rng(seed)
    features = [_choose(blob.count, max_features, sample_rng) for _, _, _, blob in targets]
    if exhaustive:
        n_feat = sum(len(f) for f in features)
        if n_rows * n_feat > EXHAUSTIVE_LIMIT:
            raise NetrunError(f"exhaustive check of {n_rows} top elements x {n_feat} features is "
                              "too large: drop --exhaustive or pass --max-features",
                              f'layer "{layer.name}"')
        analytic = [np.empty((n_rows, len(f))) for f in features]
        row = 0
        for i, size in enumerate(sizes):
            for e in range(size):
                diffs = [np.zeros(s) for s in sizes]
                diffs[i][e] = 2.0
                grads = backward(diffs)
                for g, a, f in zip(grads, analytic, features):
                    a[row] = g[f]
                row += 1
    else:
        grads = backward([a.copy() for a in base])
        analytic = [g[f] for g, f in zip(grads, features)]

    # -- numeric -----------------------------------------------------------------
    h = float(stepsize)
    ok_all = True
    for (kind, index, name, blob), feats, an in zip(targets, features, analytic):
        worst, worst_at = 0.0, None
        failing, n_fail, skipped, checked = [], 0, 0, 0
        for col, f in enumerate(feats):
            idx = np.unravel_index(int(f), blob.shape)
            x = float(blob.data[idx])
            if kink - kink_range <= abs(x) <= kink + kink_range:
                skipped += 1
                continue
            blob.data[idx] = x + h
            plus = forward()
            blob.data[idx] = x - h
            minus = forward()
            blob.data[idx] = x
            if exhaustive:
                est = np.concatenate([(p - m) / h for p, m in zip(plus, minus)])
                a = an[:, col]
            else:
                obj_p = 0.5 * sum(float(np.dot(p, p)) for p in plus)
                obj_m = 0.5 * sum(float(np.dot(m, m)) for m in minus)
                est = np.array([(obj_p - obj_m) / (2 * h)])
                a = np.array([an[col]])
            checked += 1
            scale = np.maximum(np.maximum(np.abs(a), np.abs(est)), 1.0)
            err = np.abs(a - est)
            rel = err / scale
            bad = ~(err <= threshold * scale)          # NaN counts as a failure
            r = float("nan") if np.isnan(rel).any() else float(rel.max())
            if not np.isnan(worst) and (np.isnan(r) or r > worst or worst_at is None):
                worst, worst_at = r, [int(v) for v in idx]
            if bad.any():
                n_fail += int(bad.sum())
                if len(failing) < MAX_FAILING_INDICES:
                    at = int(np.argmax(np.where(bad, np.nan_to_num(rel, nan=np.inf), -1.0)))
                    entry = {"index": [int(v) for v in idx], "feature": x,
                             "analytic": float(a[at]), "numeric": float(est[at])}
                    if exhaustive:
                        entry["top_element"] = at
                    failing.append(entry)
        status = "pass" if n_fail == 0 else "fail"
        ok_all &= n_fail == 0
        result["blobs"].append({
            "kind": kind, "index": index, "name": name, "shape": list(blob.shape),
            "features": blob.count, "checked": checked, "skipped": skipped,
            "worst_rel_error": worst, "worst_index": worst_at, "failures": n_fail,
            "failing": failing, "status": status,
        })
    result["status"] = "pass" if ok_all else "fail"
    return result


def check_net(net, inputs, layers=None, on_layer=None, **settings):
    """Check ``layers`` (names; default every layer but Split) of ``net`` (float64).

    ``inputs`` are the arrays for the net's input blobs; the net runs forward
    once and each chosen layer is checked on the bottom values it saw.
    ``on_layer(result)`` is called after each layer.  Returns the results.
    """
    if net.dtype != np.float64:
        raise NetrunError("build the net with dtype float64 for a gradient check")
    names = net.layer_names
    if layers:
        chosen = []
        for name in layers:
            if name not in names:
                import difflib
                close = difflib.get_close_matches(name, names, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise NetrunError(f'no layer named "{name}"{hint}')
            chosen.append(names.index(name))
        chosen = sorted(set(chosen))
    else:
        chosen = [li for li, layer in enumerate(net.layers)
                  if layer.type != "Split" and (net.bottom_ids[li] or layer.blobs)]
    for name, arr in inputs.items():
        net.set_input(name, arr)
    results = []
    if not chosen:
        return results
    wanted = set(chosen)
    for li in range(max(chosen) + 1):
        snapshot = None
        if li in wanted:
            snapshot = [np.array(net.blobs[b].data, dtype=np.float64) for b in net.bottom_ids[li]]
        net.forward_layer(li)
        if snapshot is None:
            continue
        layer = net.layers[li]
        try:
            res = check_layer(layer, snapshot, list(net.bottom_ids[li]), len(net.top_ids[li]),
                              **settings)
        except LayerError as e:
            raise e.located(net.where(li)) from None
        results.append(res)
        if on_layer is not None:
            on_layer(res)
    return results
