"""The same math as explicit Python loops in NumPy float64 -- what the tests trust.

Nothing here uses JAX or autodiff.  The forward functions loop over
sequences and timesteps one at a time; the backward functions are
backpropagation through time written out by hand, in the lecture's picture:
walking from the last timestep to the first, each timestep's hidden gradient
is what comes from its own output plus what comes back from the next
timestep (``dh = dh_out[t] + dh_next``).

Parameters use jrnn's layout (``W``, ``W_h``, ``b`` and, for the GRU,
``b_h``; row vectors, ``x @ W``).  ``kind`` is ``"linear"``, ``"elman"``,
``"lstm"`` or ``"gru"``; Elman cells take ``activation`` in
``identity/tanh/sigmoid/relu``.

:func:`cell_forward` also runs the cells whose gates read only ``x_t``
(``"mingru"``, ``"minlstm"``, ``"rglru"``; no ``W_h``), straight from their
papers' equations; they have no hand-written backward pass here (the tests
check their gradients by finite differences of this forward pass).

:func:`xlstm_forward` runs the xLSTM cells (``"slstm"``, ``"mlstm"``; Beck et
al. 2024), whose carries hold more than ``h``, stabilised in log space
exactly as jrnn's cells are; their gradients too are checked by finite
differences of this forward pass.

An LSTM whose params hold ``W_hr: [H, P]`` is the LSTM with projections
(LSTMP, PyTorch's ``proj_size``): ``h_t = (o * tanh c_t) @ W_hr``, so ``h``
is ``P`` wide while ``c`` and the gates stay ``H`` wide.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cell_forward",
    "cell_backward",
    "xlstm_forward",
    "lm_forward",
    "lm_loss",
    "lm_grads",
]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# Each activation with its derivative written in terms of its *output* y.
_ACT = {
    "identity": (lambda z: z, lambda y: np.ones_like(y)),
    "tanh": (np.tanh, lambda y: 1.0 - y**2),
    "sigmoid": (sigmoid, lambda y: y * (1.0 - y)),
    "relu": (lambda z: np.maximum(z, 0.0), lambda y: (y > 0).astype(y.dtype)),
}


def _f64(params):
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _activation(kind, activation):
    return _ACT["identity" if kind == "linear" else activation]


# Cells with gates that read only x_t, and the number of [., H] blocks in their W.
_INPUT_GATED = {"mingru": 2, "minlstm": 3, "rglru": 1}


def _cell_width(kind, p):
    """H, the width of each gate block (and of the LSTM's ``c``)."""
    if kind in _INPUT_GATED:
        return p["W"].shape[1] // _INPUT_GATED[kind]
    gates = {"lstm": 4, "gru": 3}.get(kind, 1)
    return p["W_h"].shape[1] // gates


def _input_gated_step(kind, p, x, h):
    """One step of minGRU / minLSTM (Feng et al. 2024) or RG-LRU (De et al. 2024)."""
    H = h.shape[-1]
    if kind == "mingru":
        a = x @ p["W"] + p["b"]
        z, h_tilde = sigmoid(a[..., :H]), a[..., H:]
        return (1.0 - z) * h + z * h_tilde
    if kind == "minlstm":
        a = x @ p["W"] + p["b"]
        f, i, h_tilde = sigmoid(a[..., :H]), sigmoid(a[..., H : 2 * H]), a[..., 2 * H :]
        return f / (f + i) * h + i / (f + i) * h_tilde  # the gates normalised to sum to 1
    u = x @ p["W"] + p["b"]  # rglru: the input projected to H first
    r = sigmoid(u @ p["W_a"] + p["b_a"])
    i = sigmoid(u @ p["W_x"] + p["b_x"])
    a = sigmoid(p["Lambda"]) ** (8.0 * r)  # a_t = a^(c r_t), c = 8
    return a * h + np.sqrt(1.0 - a**2) * (i * u)


def _step(kind, p, x, h, c, act):
    """One timestep for one sequence or a batch. Returns (h, c, cache)."""
    if kind in _INPUT_GATED:
        return _input_gated_step(kind, p, x, h), None, None
    if kind in ("linear", "elman"):
        h_new = act(x @ p["W"] + h @ p["W_h"] + p["b"])
        return h_new, None, None
    H = _cell_width(kind, p)
    if kind == "lstm":
        z = x @ p["W"] + h @ p["W_h"] + p["b"]
        i, f = sigmoid(z[..., :H]), sigmoid(z[..., H : 2 * H])
        g, o = np.tanh(z[..., 2 * H : 3 * H]), sigmoid(z[..., 3 * H :])
        c_new = f * c + i * g
        m = o * np.tanh(c_new)
        h_new = m @ p["W_hr"] if "W_hr" in p else m  # LSTMP: project h down to P
        return h_new, c_new, (i, f, g, o, c_new, m)
    if kind == "gru":
        a = x @ p["W"] + p["b"]
        u = h @ p["W_h"] + p["b_h"]
        r = sigmoid(a[..., :H] + u[..., :H])
        z = sigmoid(a[..., H : 2 * H] + u[..., H : 2 * H])
        n = np.tanh(a[..., 2 * H :] + r * u[..., 2 * H :])
        h_new = (1.0 - z) * n + z * h
        return h_new, None, (r, z, n, u)
    raise ValueError(f"unknown cell kind {kind!r}")


def cell_forward(kind, params, xs, h0=None, c0=None, *, activation="tanh",
                 lengths=None, reverse=False):
    """Run one cell over ``xs: [T, B, D]``, one sequence and one step at a time.

    Sequence ``b`` runs over its first ``lengths[b]`` steps (from the last of
    them back to the first when ``reverse``); other steps output zeros.

    Returns ``(hs [T, B, H], h_final [B, H], c_final [B, H] or None)``.
    """
    p = _f64(params)
    xs = np.asarray(xs, np.float64)
    T, B, _ = xs.shape
    C = _cell_width(kind, p)
    H = p["W_h"].shape[0] if "W_h" in p else C  # widths of h and of c
    act = _activation(kind, activation)[0]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    hs = np.zeros((T, B, H))
    h_final, c_final = np.zeros((B, H)), np.zeros((B, C))
    for b in range(B):
        h = np.zeros(H) if h0 is None else np.asarray(h0, np.float64)[b]
        c = np.zeros(C) if c0 is None else np.asarray(c0, np.float64)[b]
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            h, c_next, _ = _step(kind, p, xs[t, b], h, c, act)
            c = c if c_next is None else c_next
            hs[t, b] = h
        h_final[b], c_final[b] = h, c
    return hs, h_final, (c_final if kind == "lstm" else None)


# ---- xLSTM (Beck et al. 2024): exponential input gates, stabilised in log space ----------


def _log_sigmoid(z):
    return -np.logaddexp(0.0, -z)  # log(1 / (1 + e^-z)), finite for any z


def _block_diagonal(R):
    """The sLSTM's ``R: [heads, d, 4d]`` as one ``[H, 4H]`` matrix: zero outside each head's blocks."""
    heads, d, _ = R.shape
    H = heads * d
    dense = np.zeros((H, 4 * H))
    for k in range(heads):  # head k's units read only head k's units, in each gate block
        for g in range(4):
            dense[k * d : (k + 1) * d, g * H + k * d : g * H + (k + 1) * d] = R[k][:, g * d : (g + 1) * d]
    return dense


def _slstm_step(p, x, state):
    """One sLSTM step for one sequence; ``state = (h, c, n, m)``, each ``[H]``."""
    h, c, n, m = state
    H = h.shape[-1]
    a = x @ p["W"] + p["b"] + h @ _block_diagonal(p["R"])
    log_i, log_f = a[:H], _log_sigmoid(a[H : 2 * H])  # i = exp(a_i), f = sigmoid(a_f)
    z, o = np.tanh(a[2 * H : 3 * H]), sigmoid(a[3 * H :])
    keep = np.where(n == 0, log_i, log_f + m)  # an empty state restarts the stabiliser at log i
    m = np.maximum(keep, log_i)
    f, i = np.exp(keep - m), np.exp(log_i - m)  # f', i': the gates divided by e^m
    c = f * c + i * z
    n = f * n + i
    h = o * c / n
    return h, (h, c, n, m)


def _mlstm_step(p, x, state, heads):
    """One mLSTM step for one sequence; ``state = (C [heads, d, d], n [heads, d], m [heads], h [H])``."""
    C, n, m, h = (np.array(s) for s in state)
    H = h.shape[-1]
    d = H // heads
    a = x @ p["W"] + p["b"]
    q, k, v = (a[j * H : (j + 1) * H].reshape(heads, d) for j in range(3))
    k = k / np.sqrt(d)
    o = sigmoid(a[3 * H : 4 * H])
    log_i, log_f = a[4 * H : 4 * H + heads], _log_sigmoid(a[4 * H + heads :])
    h_tilde = np.zeros((heads, d))
    for j in range(heads):
        m_new = max(log_f[j] + m[j], log_i[j])
        f, i = np.exp(log_f[j] + m[j] - m_new), np.exp(log_i[j] - m_new)
        C[j] = f * C[j] + i * np.outer(v[j], k[j])
        n[j] = f * n[j] + i * k[j]
        m[j] = m_new
        # C q / max(|n.q|, e^-m), top and bottom times e^min(m, 0) so that no exp overflows.
        s = min(m_new, 0.0)
        h_tilde[j] = (C[j] @ q[j]) * np.exp(s) / max(abs(n[j] @ q[j]) * np.exp(s), np.exp(s - m_new))
    h = o * h_tilde.reshape(H)
    return h, (C, n, m, h)


def xlstm_forward(kind, params, xs, carry=None, *, num_heads=1, lengths=None, reverse=False):
    """Run an sLSTM or mLSTM over ``xs: [T, B, D]``, one sequence and one step at a time.

    ``carry`` is ``None`` (zeros) or the cell's carry as a tuple with a
    leading batch axis: sLSTM ``(h, c, n, m)``, each ``[B, H]``; mLSTM ``(C
    [B, heads, d, d], n [B, heads, d], m [B, heads], h [B, H])``.  The sLSTM
    reads its heads from ``R``; the mLSTM's are ``num_heads``.  ``lengths``
    and ``reverse`` as in :func:`cell_forward`.

    Returns ``(hs [T, B, H], final carry)``, the carry a tuple as given.
    """
    p = _f64(params)
    xs = np.asarray(xs, np.float64)
    T, B, _ = xs.shape
    if kind == "slstm":
        H = p["R"].shape[0] * p["R"].shape[1]
        zeros = tuple(np.zeros((B, H)) for _ in range(4))
        step = lambda x, state: _slstm_step(p, x, state)
    elif kind == "mlstm":
        H = (p["W"].shape[1] - 2 * num_heads) // 4
        d = H // num_heads
        zeros = (np.zeros((B, num_heads, d, d)), np.zeros((B, num_heads, d)),
                 np.zeros((B, num_heads)), np.zeros((B, H)))
        step = lambda x, state: _mlstm_step(p, x, state, num_heads)
    else:
        raise ValueError(f"xlstm_forward runs 'slstm' or 'mlstm', got {kind!r}")
    carry = zeros if carry is None else tuple(np.array(c, np.float64) for c in carry)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    hs = np.zeros((T, B, H))
    finals = tuple(np.array(c) for c in carry)
    for b in range(B):
        state = tuple(c[b] for c in carry)
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            hs[t, b], state = step(xs[t, b], state)
        for final, s in zip(finals, state):
            final[b] = s
    return hs, finals


def _forward_cached(kind, p, xs, act):
    """Batched forward over all T steps, keeping what the backward pass needs."""
    T, B, _ = xs.shape
    h, c = np.zeros((B, p["W_h"].shape[0])), np.zeros((B, _cell_width(kind, p)))
    hs, cs, caches = [h], [c], []
    for t in range(T):
        h, c_next, cache = _step(kind, p, xs[t], h, c, act)
        c = c if c_next is None else c_next
        hs.append(h)
        cs.append(c)
        caches.append(cache)
    return hs, cs, caches  # hs[t + 1] is the state after step t; hs[0] = h0


def cell_backward(kind, params, xs, dhs, *, activation="tanh"):
    """Hand-written BPTT for one cell started from zeros.

    Args:
      xs: ``[T, B, D]`` inputs; ``dhs: [T, B, H]`` gradient of the loss with
        respect to each output ``h_t`` (from the output layer or the layer above).

    Returns ``(grads, dxs)``: gradients for every parameter and ``dxs [T, B, D]``.
    """
    if kind in _INPUT_GATED:
        raise ValueError(f"no hand-written backward pass for {kind!r} cells here")
    p = _f64(params)
    xs = np.asarray(xs, np.float64)
    act, dact = _activation(kind, activation)
    hs, cs, caches = _forward_cached(kind, p, xs, act)
    T, B, _ = xs.shape
    H = _cell_width(kind, p)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dxs = np.zeros_like(xs)
    dh_next = np.zeros((B, p["W_h"].shape[0]))  # gradient arriving from timestep t + 1
    dc_next = np.zeros((B, H))  # LSTM: gradient arriving through the memory cell
    for t in reversed(range(T)):
        dh = dhs[t] + dh_next  # its own output + the future, as in the lecture
        x, h_prev = xs[t], hs[t]
        if kind in ("linear", "elman"):
            dz = dh * dact(hs[t + 1])
            grads["W"] += x.T @ dz
            grads["W_h"] += h_prev.T @ dz
            grads["b"] += dz.sum(0)
            dxs[t] = dz @ p["W"].T
            dh_next = dz @ p["W_h"].T
        elif kind == "lstm":
            i, f, g, o, c, m = caches[t]
            if "W_hr" in p:  # LSTMP: h = m @ W_hr, so W_hr sees m and m gets dh @ W_hr.T
                grads["W_hr"] += m.T @ dh
                dh = dh @ p["W_hr"].T
            tc = np.tanh(c)
            do = dh * tc
            dc = dh * o * (1.0 - tc**2) + dc_next
            di, df, dg = dc * g, dc * cs[t], dc * i
            dz = np.concatenate(
                [di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], axis=-1
            )
            grads["W"] += x.T @ dz
            grads["W_h"] += h_prev.T @ dz
            grads["b"] += dz.sum(0)
            dxs[t] = dz @ p["W"].T
            dh_next = dz @ p["W_h"].T
            dc_next = dc * f
        elif kind == "gru":
            r, z, n, u = caches[t]
            dn = dh * (1.0 - z)
            dz_ = dh * (h_prev - n)
            dn_pre = dn * (1.0 - n**2)
            dr = dn_pre * u[:, 2 * H :]
            dr_pre, dz_pre = dr * r * (1 - r), dz_ * z * (1 - z)
            da = np.concatenate([dr_pre, dz_pre, dn_pre], axis=-1)  # d(x W + b)
            du = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=-1)  # d(h W_h + b_h)
            grads["W"] += x.T @ da
            grads["b"] += da.sum(0)
            grads["W_h"] += h_prev.T @ du
            grads["b_h"] += du.sum(0)
            dxs[t] = da @ p["W"].T
            dh_next = dh * z + du @ p["W_h"].T
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
    return grads, dxs


def _log_softmax(logits):
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def _out_weights(params):
    out = params["out"]
    W = np.asarray(params["embed"], np.float64).T if "W" not in out else np.asarray(out["W"], np.float64)
    return W, np.asarray(out["b"], np.float64)


def lm_forward(kind, params, inputs, *, activation="tanh"):
    """RNN LM forward for ``inputs: int[B, T]`` (zero initial state, no dropout).

    Returns ``(logits [B, T, V], per-layer inputs [T, B, *], last hidden states [T, B, H])``.
    """
    inputs = np.asarray(inputs)
    E = np.asarray(params["embed"], np.float64)
    xs = E[inputs.T]  # [T, B, E]
    layer_inputs = []
    for p in params["layers"]:
        layer_inputs.append(xs)
        xs, _, _ = cell_forward(kind, p, xs, activation=activation)
    W_out, b_out = _out_weights(params)
    logits = np.swapaxes(xs, 0, 1) @ W_out + b_out
    return logits, layer_inputs, xs


def lm_loss(kind, params, inputs, targets, *, activation="tanh"):
    """Cross-entropy per timestep summed over time and batch, and the ``[B, T]`` losses."""
    logits, _, _ = lm_forward(kind, params, inputs, activation=activation)
    logp = _log_softmax(logits)
    targets = np.asarray(targets)
    B, T = targets.shape
    losses = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            losses[b, t] = -logp[b, t, targets[b, t]]
    return losses.sum(), losses


def lm_grads(kind, params, inputs, targets, *, activation="tanh"):
    """Gradient of :func:`lm_loss` for every parameter, by hand.

    Softmax + cross-entropy gives ``dlogits = softmax - onehot`` at each
    timestep; the output layer sends ``dlogits @ W_out.T`` to each hidden
    state; each layer runs its BPTT and passes ``dxs`` to the layer below;
    the embedding rows collect the first layer's ``dxs``.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    logits, layer_inputs, top = lm_forward(kind, params, inputs, activation=activation)
    dlogits = np.exp(_log_softmax(logits))
    B, T = targets.shape
    for b in range(B):
        for t in range(T):
            dlogits[b, t, targets[b, t]] -= 1.0
    W_out, _ = _out_weights(params)
    E = np.asarray(params["embed"], np.float64)
    grads = {"embed": np.zeros_like(E), "out": {"b": dlogits.sum((0, 1))}}
    h_top = np.swapaxes(top, 0, 1)  # [B, T, H]
    dW_out = np.einsum("bth,btv->hv", h_top, dlogits)
    if "W" in params["out"]:
        grads["out"]["W"] = dW_out
    else:  # tied: the output weights are embed.T
        grads["embed"] += dW_out.T
    dhs = np.swapaxes(dlogits @ W_out.T, 0, 1)  # [T, B, H]
    layer_grads = [None] * len(params["layers"])
    for l in reversed(range(len(params["layers"]))):
        layer_grads[l], dhs = cell_backward(
            kind, params["layers"][l], layer_inputs[l], dhs, activation=activation
        )
    grads["layers"] = layer_grads
    for t in range(T):
        for b in range(B):
            grads["embed"][inputs[b, t]] += dhs[t, b]
    return grads
