"""jrnn.analysis.streams and benchmarks/fresh_start.py: per-stream scores, zero and warm carry, locks."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.analysis import streams as per_stream
from jrnn.cli import main as cli
from jrnn.training.loop import evaluate
from tests.helpers import load_benchmark

fresh = load_benchmark("fresh_start")


def _latch_model():
    """A tanh RNN LM that latches: W_h = 4 I keeps h at +-1 once pushed there, whatever follows.

    Word 0 pushes unit 0 to +1 from the zero carry; every other word barely
    moves it.  The output layer puts 30 on word 1 per unit of h[0], and every
    continuation here is word 2, so a latched row costs about 30 nats a token
    and any other about log(5) or less."""
    model = jrnn.rnn_lm(vocab_size=5, cell="elman", activation="tanh", embed_size=2,
                        hidden_size=2, num_layers=1)
    params = jax.tree_util.tree_map(jnp.zeros_like, model.init(jax.random.PRNGKey(0)))
    params["embed"] = params["embed"].at[0, 0].set(3.0).at[1:, 1].set(0.1)
    layer = params["layers"][0]
    layer["W"] = jnp.eye(2)
    layer["W_h"] = 4.0 * jnp.eye(2)
    params["out"]["W"] = params["out"]["W"].at[0, 1].set(30.0)
    return model, params


def test_the_zero_carry_score_is_what_evaluation_reports():
    model, params = _latch_model()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 203)
    streams = jrnn.data.batchify(ids, 4)
    got = per_stream.stream_scores(model, params, streams, bptt=7)
    ppl, n = evaluate(model, params, ids, batch_size=4, bptt=7)
    assert got["tokens"] * 4 == n
    np.testing.assert_allclose(np.mean(got["nll"]), math.log(ppl), rtol=1e-5)
    h, _, _ = model.features(params, jnp.asarray(streams[:, :-1]), model.initial_carry(4))
    np.testing.assert_allclose(got["h_std"], np.asarray(h).std(1).mean(-1), rtol=1e-4, atol=1e-6)


def test_a_latched_first_word_is_found_and_a_warm_carry_escapes_it():
    model, params = _latch_model()
    cont = np.full(30, 2, np.int32)
    locks = per_stream.first_word_locks(model, params, cont, [0, 1, 2, 3, 4], threshold=10.0, rows=2)
    assert [w for w, _ in locks] == [0]
    assert locks[0][1] > 25.0
    # A stream starting with word 0 latches from the zero carry; from a carry already latched
    # at -1 (set by hand: no word pushes there), word 0's push of 3 cannot flip it.
    streams = np.stack([np.concatenate([[0], cont]), np.concatenate([[3], cont])])
    cold = per_stream.stream_scores(model, params, streams, bptt=8)
    assert cold["nll"][0] > 25.0 and cold["nll"][1] < 2.0
    warm = [jnp.stack([jnp.array([-1.0, 0.0])] * 2)]
    assert per_stream.stream_scores(model, params, streams, bptt=8, carry=warm)["nll"][0] < 2.0


def test_the_warm_carry_with_no_warmup_is_the_zero_carry():
    model, params = _latch_model()
    c = per_stream.warm_carry(model, params, np.array([0, 1, 2]), 0)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a: not a.any(), c))
    tiled = per_stream.tile_carry(per_stream.warm_carry(model, params, np.array([0, 1, 2]), 3), 4)
    assert tiled[0].shape == (4, 2) and float(tiled[0][0, 0]) > 0.99


def test_the_script_runs_on_a_trained_run(tmp_path, capsys):
    words = ["john is driving a car", "mary is driving a truck", "john is feeding a cat"]
    (tmp_path / "toy.train.txt").write_text("\n".join(words * 20) + "\n")
    (tmp_path / "toy.valid.txt").write_text("\n".join(words * 3) + "\n")
    (tmp_path / "toy.test.txt").write_text("\n".join(words[::-1] * 3) + "\n")
    run = tmp_path / "run"
    assert cli(["train", "--data", str(tmp_path), "--out", str(run), "--cell", "slstm", "--layers", "1",
                "--embed-size", "8", "--hidden-size", "8", "--batch-size", "4", "--bptt", "6",
                "--epochs", "1", "--optimizer", "adam", "--lr", "0.02", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "f.json"
    assert fresh.main([str(run), "--data", str(tmp_path), "--batch-size", "3", "--sample", "5",
                       "--continuation", "10", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert len(saved["zero_carry_nll"]) == 3 and saved["sampled"] == 5
    assert cli(["eval", "--checkpoint", str(run), "--data", str(tmp_path), "--split", "valid",
                "--batch-size", "3"]) == 0
    reported = float(capsys.readouterr().out.split("perplexity ")[1].split()[0])
    assert saved["ppl_zero_carry"] == pytest.approx(reported, abs=0.006)  # eval prints 2 decimals
    assert "from the warm carry" in text
    for bad in (["--data", str(tmp_path / "nothing-here")],
                ["--data", str(tmp_path), "--threshold", "nan"],
                ["--data", str(tmp_path), "--json", str(tmp_path / "no-dir" / "f.json")]):
        with pytest.raises(SystemExit) as e:
            fresh.main([str(run), *bad])
        assert e.value.code == 2
