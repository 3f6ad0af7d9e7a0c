"""rnn_lm(proj_size=P): a language model of LSTMs with projections, in the library,
the training config and the command line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.cli import main
from jrnn.training.config import DEFAULT, ConfigError
from jrnn.models.lm import build_model
from jrnn.training.fit import estimate_bytes

V, E, H, P, L = 23, 5, 8, 3, 2


def test_rnn_lm_with_projections_is_embed_lstmp_stack_readout():
    model = jrnn.rnn_lm(V, embed_size=E, hidden_size=H, num_layers=L, proj_size=P)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    shapes = [{k: v.shape for k, v in p.items()} for p in params["layers"]]
    assert shapes == [{"W": (E, 4 * H), "W_h": (P, 4 * H), "b": (4 * H,), "W_hr": (H, P)},
                      {"W": (P, 4 * H), "W_h": (P, 4 * H), "b": (4 * H,), "W_hr": (H, P)}]
    assert params["out"]["W"].shape == (P, V)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 6), 0, V)
    logits, carry = model.apply(params, tokens)
    # The same model composed by hand from the public pieces.
    cells = [jrnn.lstm(H, proj_size=P) for _ in range(L)]
    xs = params["embed"][tokens.T]
    finals, hs = jrnn.unroll(cells, params["layers"], xs, method="scan")
    want = jnp.swapaxes(hs, 0, 1) @ params["out"]["W"] + params["out"]["b"]
    np.testing.assert_allclose(logits, want, rtol=1e-10, atol=1e-12)
    assert [c.h.shape for c in carry] == [(4, P)] * L and [c.c.shape for c in carry] == [(4, H)] * L


def test_rnn_lm_with_projections_gradients_equal_autodiff():
    def grads(custom):
        model = jrnn.rnn_lm(V, embed_size=E, hidden_size=H, num_layers=L, proj_size=P,
                            custom_vjp=custom)
        params = model.init(jax.random.PRNGKey(0), jnp.float64)
        x = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0, V)
        return jax.grad(lambda p: jrnn.sequence_loss(model, p, x, (x + 1) % V)[0])(params)

    for a, b in zip(jax.tree_util.tree_leaves(grads(True)), jax.tree_util.tree_leaves(grads(False))):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(cell="gru", proj_size=3), "proj_size applies to 'lstm' models, not 'gru'"),
    (dict(proj_size=8), "smaller than hidden_size"),
    (dict(proj_size=0), "proj_size must be"),
    (dict(proj_size=3, tie_embeddings=True), "embed_size equal to proj_size"),
])
def test_rnn_lm_refuses_bad_projections(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jrnn.rnn_lm(V, embed_size=E, hidden_size=H, num_layers=L, **kwargs)


def test_train_config_and_cli_take_proj_size(tmp_path, capsys):
    cfg = DEFAULT.replace(hidden_size=16, embed_size=8, proj_size=8, tie_embeddings=True)
    model = build_model(cfg.model, 30)
    assert model.init(jax.random.PRNGKey(0))["layers"][0]["W_hr"].shape == (16, 8)
    assert estimate_bytes(cfg, 30) < estimate_bytes(cfg.replace(proj_size=None, tie_embeddings=False,
                                                                embed_size=16), 30)
    with pytest.raises(ConfigError, match="proj_size applies to 'lstm' models, not 'elman'"):
        DEFAULT.replace(cell="elman", proj_size=4)
    assert main(["train", "--cell", "lstm", "--hidden-size", "16", "--proj-size", "16"]) == 2
    assert capsys.readouterr().err.strip() == (
        "jrnn: error: --proj-size is for the LSTM and must be smaller than hidden_size (16), "
        "got 16 with cell 'lstm'")
    out = str(tmp_path / "run")
    assert main(["train", "--hidden-size", "16", "--embed-size", "8", "--proj-size", "8",
                 "--epochs", "1", "--max-windows", "2", "--batch-size", "4", "--bptt", "5",
                 "--quiet", "--out", out]) == 0
    from jrnn.training.fit import load_for_inference

    _, params, _, meta = load_for_inference(out)
    assert meta["config"]["model"]["proj_size"] == 8
    assert params["layers"][0]["W_hr"].shape == (16, 8)
