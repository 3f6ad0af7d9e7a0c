"""``diagnostics.lm_grad_flow`` on an LSTM with projections (issue 23, wrong result 2).

With ``proj_size=P`` each layer's hidden state ``h`` is ``P`` wide (the cell
state ``c`` is ``H`` wide), so the probes ``dL/dh^l_t`` must be sized from the
model's cells, not from ``config.hidden_size``.  Every entry is checked
against a direct ``jax.grad`` that needs no probes: the layer's run is split at
step ``t`` and the loss differentiated with respect to ``h^l_t`` in the carry.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from jrnn import diagnostics as dg

V, E, H, P, L, T, B = 11, 5, 8, 3, 2, 4, 3


def _direct_hidden_flow(model, params, x, y):
    """``||dL_{T-1}/dh^l_t||`` (mean over the batch) for every layer ``l`` and step ``t``."""
    cells = model.cells

    def last_loss(params, hs_top):  # hs_top: [T, B, P] -> summed cross-entropy of the last target
        logits = hs_top[-1] @ params["out"]["W"] + params["out"]["b"]
        return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(B), y[:, -1]])

    def run(layer, params, xs, carry=None):
        return jrnn.unroll(cells[layer], params["layers"][layer], xs, carry, method="scan")

    def flow(params, layer, t, xs):  # xs: the inputs of this layer
        carry_t, hs_head = run(layer, params, xs[:t + 1])

        def loss(h):  # h^l_t feeds the layer above at t and this layer's step t + 1
            hs = jnp.concatenate([hs_head[:t], h[None]])
            if t + 1 < T:
                rest = run(layer, params, xs[t + 1:], carry_t._replace(h=h))[1]
                hs = jnp.concatenate([hs, rest])
            for k in range(layer + 1, L):
                hs = run(k, params, hs)[1]
            return last_loss(params, hs)

        g = jax.grad(loss)(carry_t.h)
        assert g.shape == (B, P)
        return jnp.mean(jnp.linalg.norm(g, axis=-1))

    @jax.jit  # one graph: the L*T gradients compile once
    def flows(params):
        xs, out = params["embed"][x.T], []
        for layer in range(L):
            out.append(jnp.stack([flow(params, layer, t, xs) for t in range(T)]))
            xs = run(layer, params, xs)[1]
        return jnp.stack(out)

    return np.asarray(flows(params))


def test_lm_grad_flow_of_a_projected_lstm_equals_direct_gradients():
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=E, hidden_size=H, proj_size=P, num_layers=L)
    assert [c.hidden_size for c in model.cells] == [P] * L
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, V)
    y = jax.random.randint(jax.random.PRNGKey(2), (B, T), 0, V)

    flow = dg.lm_grad_flow(model, params, x, y)

    assert flow.hidden.shape == (L, T) and flow.inputs.shape == (T,)
    np.testing.assert_allclose(np.asarray(flow.hidden), _direct_hidden_flow(model, params, x, y),
                               rtol=1e-10)
    # The inputs: ||dL/de_t|| of the summed cross-entropy, straight through model.apply's parts.
    def total(xs):
        logits, _, _ = dg._lm_forward(model, params, x, xs=xs)
        return jnp.sum(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))
    g_x = jax.jit(jax.grad(total))(params["embed"][x.T])
    np.testing.assert_allclose(np.asarray(flow.inputs),
                               np.mean(np.linalg.norm(g_x, axis=-1), axis=-1), rtol=1e-10)
    assert np.all(np.asarray(flow.hidden) > 0)
