"""PyTorch's bidirectional stacks and LSTM projections (proj_size) against jrnn.

``from_torch`` of ``nn.LSTM/GRU/RNN(num_layers, bidirectional=True, proj_size=P)``
run by :func:`jrnn.bidirectional` (or :func:`jrnn.unroll`) agrees with torch in
outputs, final states and gradients at float32 tolerance, with and without
padding (``pack_padded_sequence(..., enforce_sorted=False)`` against
``lengths``); ``to_torch`` gives back the same weights exactly.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch is optional: pip install torch==2.13.0 (CPU build) to run the interop tests",
)

import jrnn  # noqa: E402
from jrnn.interop import torch as interop  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
TOL = dict(atol=2e-5, rtol=2e-4)  # float32 on both sides
T, B, D, H, P = 5, 3, 4, 6, 3
LENGTHS = [5, 2, 4]  # unsorted: pack_padded_sequence(enforce_sorted=False)


def _module(kind, layers, bidirectional, proj, seed):
    torch.manual_seed(seed)
    args = dict(num_layers=layers, bidirectional=bidirectional)
    if kind == "lstm":
        return torch.nn.LSTM(D, H, proj_size=proj, **args)
    if kind == "gru":
        return torch.nn.GRU(D, H, **args)
    return torch.nn.RNN(D, H, nonlinearity=kind, **args)


def _np(t):
    return t.detach().numpy()


def _run_torch(module, x, state, lengths):
    if lengths is None:
        return module(x, state)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor(lengths), enforce_sorted=False)
    ys, state_n = module(packed, state)
    ys, _ = torch.nn.utils.rnn.pad_packed_sequence(ys, total_length=T)
    return ys, state_n


CASES = [  # kind, num_layers, bidirectional, proj_size, padded
    ("lstm", 1, True, 0, False),
    ("gru", 2, True, 0, True),
    ("tanh", 3, True, 0, False),
    ("relu", 2, True, 0, True),
    ("lstm", 2, False, P, True),
    ("lstm", 2, True, P, False),
    ("lstm", 3, True, P, True),
]


@pytest.mark.parametrize("kind,layers,bidir,proj,padded", CASES)
def test_agrees_with_torch(kind, layers, bidir, proj, padded):
    module = _module(kind, layers, bidir, proj, seed=layers)
    cells, params = interop.from_torch(module)
    assert len(cells) == len(params) == layers
    dirs = 2 if bidir else 1
    g = torch.Generator().manual_seed(7)
    x = torch.randn(T, B, D, generator=g, requires_grad=True)
    h0 = torch.randn(dirs * layers, B, proj or H, generator=g)
    state = (h0, torch.randn(dirs * layers, B, H, generator=g)) if kind == "lstm" else h0
    lengths = LENGTHS if padded else None

    ys, state_n = _run_torch(module, x, state, lengths)
    states = list(state_n) if kind == "lstm" else [state_n]
    loss = ys.sum() + sum(s.sum() for s in states)
    loss.backward()

    run = jrnn.bidirectional if bidir else jrnn.unroll
    carry0 = interop.carry_from_torch(state, cells)
    jl = None if lengths is None else jnp.array(lengths)

    def jax_loss(params, xs):
        finals, hs = run(cells, params, xs, carry0, lengths=jl)
        return jnp.sum(hs) + sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(finals)), (finals, hs)

    (value, (finals, hs)), (g_params, g_x) = jax.value_and_grad(
        jax_loss, argnums=(0, 1), has_aux=True)(params, jnp.asarray(_np(x)))
    assert hs.shape == (T, B, dirs * (proj or H))
    chex.assert_trees_all_close(hs, _np(ys), **TOL)
    got = interop.carry_to_torch(finals)
    chex.assert_trees_all_close([_np(t) for t in (got if kind == "lstm" else [got])],
                                [_np(s) for s in states], **TOL)
    np.testing.assert_allclose(float(value), float(loss.detach()), rtol=1e-5)
    chex.assert_trees_all_close(g_x, _np(x.grad), **TOL)
    # parameter gradients, the projection's included, direction by direction
    for l in range(layers):
        for d, suffix in enumerate(("", "_reverse")[:dirs]):
            gp = g_params[l][d] if bidir else g_params[l]
            grad = lambda name: _np(module.get_parameter(f"{name}_l{l}{suffix}").grad).T
            chex.assert_trees_all_close(gp["W"], grad("weight_ih"), **TOL)
            chex.assert_trees_all_close(gp["W_h"], grad("weight_hh"), **TOL)
            if proj:
                chex.assert_trees_all_close(gp["W_hr"], grad("weight_hr"), **TOL)

    # to_torch gives back the module's weights exactly (biases merged as documented)
    back = interop.to_torch(params, cells)
    assert (back.num_layers, back.bidirectional, getattr(back, "proj_size", 0)) == (layers, bidir, proj)
    for name, value in module.named_parameters():
        if name.startswith("bias_hh") and kind != "gru":
            continue  # jrnn's one b = bias_ih + bias_hh goes to bias_ih
        want = _np(value) + (_np(module.get_parameter(name.replace("ih", "hh")))
                             if name.startswith("bias_ih") and kind != "gru" else 0)
        np.testing.assert_array_equal(_np(back.get_parameter(name)), np.float32(want))
    _, again = interop.from_torch(back)
    chex.assert_trees_all_close(again, params, atol=0, rtol=0)


def test_jrnn_params_to_torch_and_back():
    """jrnn-initialized bidirectional LSTMP layers: to_torch runs them, and round-trips exactly."""
    cells = [(jrnn.lstm(H, proj_size=P), jrnn.lstm(H, proj_size=P)) for _ in range(2)]
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = [(f.init(keys[2 * l], D if l == 0 else 2 * P), b.init(keys[2 * l + 1], D if l == 0 else 2 * P))
              for l, (f, b) in enumerate(cells)]
    module = interop.to_torch(params, cells, batch_first=True)
    assert module.proj_size == P and module.bidirectional and module.batch_first
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), jnp.float32)
    ys, (h_n, c_n) = module(torch.tensor(np.asarray(xs)))
    finals, hs = jrnn.bidirectional(cells, params, xs, time_major=False)
    chex.assert_trees_all_close(hs, _np(ys), **TOL)
    got_h, got_c = interop.carry_to_torch(finals)
    assert tuple(got_h.shape) == (4, B, P) and tuple(got_c.shape) == (4, B, H)
    chex.assert_trees_all_close((_np(got_h), _np(got_c)), (_np(h_n), _np(c_n)), **TOL)
    _, back = interop.from_torch(module)
    chex.assert_trees_all_close(back, params, atol=0, rtol=0)
    with pytest.raises(ValueError, match="pair"):
        interop.to_torch([params[0], params[1][0]], cells)
