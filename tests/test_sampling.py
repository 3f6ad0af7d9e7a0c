"""Sampling and scoring in the library (jrnn.sample, jrnn.stream, jrnn.score) and on the command line."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference as ref
from jrnn.cli import main
from jrnn.training.inference import load_for_inference
from tests.helpers import to_np

V = 10
# A fixed next-word distribution, its ids shuffled so that "most probable" is not "lowest id".
PROBS = np.zeros(V)
PROBS[[7, 2, 9, 0, 5, 4, 1, 8, 3, 6]] = [0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005]


def allowed_reference(probs, top_k=None, top_p=None):
    """The ids a draw may give, in float64 loops: the top k, then the nucleus of their renormalized mass."""
    order = sorted(range(len(probs)), key=lambda w: -probs[w])[: top_k or len(probs)]
    mass = sum(probs[w] for w in order)
    keep, before = set(), 0.0
    for w in order:
        if top_p is not None and before >= top_p:
            break
        keep.add(w)
        before += probs[w] / mass
    return keep


@pytest.fixture(scope="module")
def fixed():
    """An LSTM LM whose every next-word distribution is PROBS: output weights 0, bias log PROBS."""
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=4, hidden_size=4, num_layers=1)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    params["out"] = {"W": jnp.zeros_like(params["out"]["W"]), "b": jnp.log(jnp.asarray(PROBS))}
    return model, params


@pytest.fixture(scope="module")
def lstm():
    """A float64 LSTM LM with peaked, context-dependent distributions."""
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=6, hidden_size=8, num_layers=2, init_scale=0.8)
    return model, model.init(jax.random.PRNGKey(3), jnp.float64)


def prompts(B, P, seed=0):
    rest = jax.random.randint(jax.random.PRNGKey(seed), (B, P - 1), 0, V)
    return jnp.concatenate([jnp.zeros((B, 1), rest.dtype), rest], axis=1).astype(jnp.int32)


def test_temperature_zero_is_the_stepwise_argmax(lstm):
    model, params = lstm
    prompt = prompts(3, 4)
    text = jnp.zeros((3, 11), jnp.int32).at[:, :4].set(prompt)
    for t in range(4, 11):  # teacher-forced: the whole text again at each step, no carry
        lp = jrnn.next_token_log_probs(model, params, text, lengths=jnp.full((3,), t))
        text = text.at[:, t].set(jnp.argmax(lp, -1).astype(jnp.int32))
    greedy = jrnn.sample(model, params, prompt, 7, temperature=0)
    assert greedy.dtype == jnp.int32 and greedy.shape == (3, 7)
    np.testing.assert_array_equal(greedy, text[:, 4:])
    cold = jrnn.sample(model, params, prompt, 7, key=jax.random.key(0), temperature=1e-9)
    np.testing.assert_array_equal(cold, text[:, 4:])


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.45), (None, 0.55), (4, 0.6),
                                         (1, None), (None, 1.0)])
def test_draws_stay_in_the_top_k_and_the_nucleus_of_a_known_distribution(fixed, top_k, top_p):
    model, params = fixed
    draws = np.asarray(jrnn.sample(model, params, prompts(256, 2), 40, key=jax.random.key(1),
                                   top_k=top_k, top_p=top_p))
    allowed = allowed_reference(PROBS, top_k, top_p)
    assert set(draws.ravel().tolist()) == allowed  # nothing outside, everything inside drawn
    # ... and in the renormalized proportions (10,240 draws: a standard error below 0.005).
    mass = sum(PROBS[w] for w in allowed)
    for w in allowed:
        assert abs(np.mean(draws == w) - PROBS[w] / mass) < 0.03, (w, np.mean(draws == w))


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.7), (5, 0.8)])
def test_draws_stay_in_the_top_k_and_nucleus_of_each_context(lstm, top_k, top_p):
    """A model whose distribution changes each step: every draw checked against the
    distribution of its own prefix, recomputed teacher-forced and cut in float64 loops."""
    model, params = lstm
    prompt = prompts(32, 3, seed=1)
    out = jrnn.sample(model, params, prompt, 10, key=jax.random.key(2), temperature=0.9,
                      top_k=top_k, top_p=top_p)
    logits, _ = model.apply(params, jnp.concatenate([prompt, out], 1))
    probs = np.asarray(jax.nn.softmax(logits / 0.9))
    for b in range(32):
        for t in range(10):
            assert int(out[b, t]) in allowed_reference(probs[b, 2 + t], top_k, top_p)


def test_rows_sampled_together_equal_rows_sampled_alone(lstm):
    model, params = lstm
    prompt = prompts(4, 5, seed=2)
    keys = jax.random.split(jax.random.key(5), 4)
    opts = dict(temperature=0.7, top_k=6, top_p=0.9)
    together = jrnn.sample(model, params, prompt, 12, key=keys, **opts)
    for b in range(4):
        alone = jrnn.sample(model, params, prompt[b:b + 1], 12, key=keys[b:b + 1], **opts)
        np.testing.assert_array_equal(alone[0], together[b])
    # One key is split into one per row; raw uint32 keys work as typed ones.
    one = jrnn.sample(model, params, prompt, 12, key=jax.random.key(5), **opts)
    np.testing.assert_array_equal(one, together)
    raw = jrnn.sample(model, params, prompt, 12, key=jax.random.key_data(keys), **opts)
    np.testing.assert_array_equal(raw, together)


@pytest.mark.parametrize("which", ["lstm", "nnlm"])
def test_stream_gives_what_sample_gives(lstm, which):
    if which == "lstm":
        model, params = lstm
    else:
        model = jrnn.nnlm(V, context_size=3, embed_size=4, hidden_size=8, init_scale=1.0)
        params = model.init(jax.random.PRNGKey(4))
    prompt = prompts(3, 4, seed=3)
    opts = dict(key=jax.random.key(9), temperature=1.3, top_p=0.95)
    scanned = jrnn.sample(model, params, prompt, 9, **opts)
    streamed = list(jrnn.stream(model, params, prompt, length=9, **opts))
    assert len(streamed) == 9 and streamed[0].shape == (3,)
    np.testing.assert_array_equal(np.stack(streamed, 1), scanned)
    endless = jrnn.stream(model, params, prompt, **opts)  # length=None: as long as asked
    np.testing.assert_array_equal(np.stack([next(endless) for _ in range(9)], 1), scanned)


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=-1.0), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(top_k=0), "top_k must be a positive int"),
    (dict(top_k=2.5), "top_k must be a positive int"),
    (dict(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be a number in \(0, 1\]"),
    (dict(prompt=jnp.zeros((2, 0), jnp.int32)), "at least one token"),
    (dict(prompt=jnp.array([[0, V]])), r"prompt must be ids in \[0, vocab_size=10\)"),
    (dict(length=0), "length must be a positive int"),
    (dict(key=None), "key is needed"),
    (dict(key=jax.random.split(jax.random.key(0), 3)), "one per row"),
])
def test_bad_arguments_are_one_line_value_errors(lstm, kwargs, message):
    model, params = lstm
    args = dict(prompt=prompts(2, 3), length=4, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as e:
        jrnn.sample(model, params, args.pop("prompt"), args.pop("length"), **args)
    assert "\n" not in str(e.value)
    if "length" not in kwargs:  # stream checks the same, when it is made
        with pytest.raises(ValueError, match=message):
            jrnn.stream(model, params, kwargs.get("prompt", prompts(2, 3)),
                        **{k: v for k, v in args.items()})


def test_non_finite_logits_raise_instead_of_drawing_garbage(lstm):
    model, params = lstm
    bad = {**params, "out": {**params["out"], "b": params["out"]["b"].at[3].set(jnp.nan)}}
    with pytest.raises(FloatingPointError, match="logits are not finite"):
        jrnn.sample(model, bad, prompts(3, 4), 7, temperature=0)
    with pytest.raises(FloatingPointError, match="logits are not finite"):
        next(jrnn.stream(model, bad, prompts(3, 4), key=jax.random.key(0)))


def test_score_of_a_ragged_batch_is_each_sentence_alone_and_the_reference(lstm):
    model, params = lstm
    rng = np.random.default_rng(0)
    sentences = [[0] + rng.integers(0, V, n).tolist() for n in (1, 7, 3, 3, 12, 2, 5, 1)]
    got = jrnn.score(model, params, sentences, batch_size=3)  # chunks and padded rows too
    np.testing.assert_array_equal(got.num_tokens, [len(s) - 1 for s in sentences])
    row = lambda s: jnp.zeros((1, 13), jnp.int32).at[0, :len(s)].set(jnp.array(s, jnp.int32))  # one shape
    alone = [float(jrnn.log_prob(model, params, row(s), jnp.array([len(s)]))[0]) for s in sentences]
    np.testing.assert_allclose(got.log_prob, alone, rtol=1e-12)
    for s, lp in zip(sentences, got.log_prob):
        _, losses = ref.lm_loss("lstm", to_np(params), np.array([s[:-1]]), np.array([s[1:]]))
        np.testing.assert_allclose(lp, -losses.sum(), rtol=1e-10)
    np.testing.assert_allclose(got.perplexity, np.exp(-got.log_prob / got.num_tokens))


def test_score_refuses_what_it_cannot_score(lstm):
    model, params = lstm
    with pytest.raises(ValueError, match=r"sentences\[1\] needs a start symbol and at least one"):
        jrnn.score(model, params, [[0, 1], [0]])
    with pytest.raises(ValueError, match=r"sentences\[0\] must hold ids in \[0, vocab_size=10\)"):
        jrnn.score(model, params, [[0, 11]])
    with pytest.raises(TypeError, match="not a string"):
        jrnn.score(model, params, "0 1 2")


# ---- the command line --------------------------------------------------------------------

SENTENCES = ["john is driving a car", "mary is feeding a dog", "the cat is driving a spaceship"]


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_score_file_equals_scoring_each_sentence(tiny_run, tmp_path, capsys):
    f = tmp_path / "s.txt"
    f.write_text(SENTENCES[0] + "\n\n   \n  " + SENTENCES[1].replace(" ", "\t ") + "\n" + SENTENCES[2])
    assert main(["score", "--file", str(f), "--checkpoint", tiny_run]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[3] for r in rows] == SENTENCES  # blank lines skipped, file order, spaces normalized
    assert main(["score", "--file", str(f), "--format", "json", "--checkpoint", tiny_run]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for s, (lp, n, ppl, _), o in zip(SENTENCES, rows, objects):
        assert main(["score", s, "--checkpoint", tiny_run]) == 0
        one = re.search(r"log p = (\S+) .*perplexity (\S+) over (\d+) tokens",
                        capsys.readouterr().out)
        assert abs(float(lp) - float(one.group(1))) < 1e-3 and n == one.group(3)
        assert abs(float(ppl) - float(one.group(2))) < 0.01 * float(ppl)
        assert o["sentence"] == s and o["tokens"] == int(n) and abs(o["log_prob"] - float(lp)) < 1e-4


def test_score_file_errors_are_one_line(tiny_run, tmp_path, capsys):
    f = tmp_path / "s.txt"
    f.write_text("john is here\n")
    assert "not both" in _one_line_error(capsys, ["score", "a", "--file", str(f),
                                                  "--checkpoint", tiny_run])
    assert "--file" in _one_line_error(capsys, ["score", "--checkpoint", tiny_run])
    assert "--format goes with --file" in _one_line_error(
        capsys, ["score", "a", "--format", "json", "--checkpoint", tiny_run])
    assert "no such file" in _one_line_error(
        capsys, ["score", "--file", str(tmp_path / "nope"), "--checkpoint", tiny_run])
    (tmp_path / "blank.txt").write_text("\n \n")
    assert "empty or whitespace-only" in _one_line_error(
        capsys, ["score", "--file", str(tmp_path / "blank.txt"), "--checkpoint", tiny_run])


def test_generate_top_k_1_is_greedy(tiny_run, capsys):
    model, params, vocab, _ = load_for_inference(tiny_run)
    greedy = jrnn.sample(model, params, np.array([[vocab.eos_id]]), 15, temperature=0)[0]
    words = ["\n" if vocab.itos[int(i)] == "<eos>" else vocab.itos[int(i)] for i in greedy]
    want = " ".join(words).replace(" \n ", "\n").replace(" \n", "\n")
    for seed in ("1", "2"):
        assert main(["generate", "--words", "15", "--top-k", "1", "--seed", seed,
                     "--checkpoint", tiny_run]) == 0
        assert capsys.readouterr().out == want + "\n"
    assert main(["generate", "--words", "15", "--top-p", "0.5", "--top-k", "4",
                 "--checkpoint", tiny_run]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--top-p", "1.5"], r"--top-p must be in (0, 1], got 1.5"),
    (["--top-p", "0"], r"--top-p must be in (0, 1], got 0.0"),
    (["--top-k", "0"], "--top-k must be a positive int, got 0"),
    (["--top-k", "2.5"], "invalid int value"),
    (["--seed", "-1"], "--seed must be an int in 0.."),
])
def test_generate_refuses_bad_sampling_options_in_one_line(tiny_run, capsys, argv, message):
    try:
        code = main(["generate", *argv, "--checkpoint", tiny_run])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err


# ---- the README's section, run as written after a `jrnn train` ----------------------------

def _readme_section(tmp_path, monkeypatch, tiny_run):
    """The README's "Sampling and scoring" blocks, in a folder whose runs/ holds a trained run."""
    import pathlib
    import shutil

    from jrnn.training import runs

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    python = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "jrnn.sample(" in b][0]
    bash = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "score --file" in b][0]
    shutil.copytree(tiny_run, tmp_path / "runs" / "1")
    runs.write_latest(str(tmp_path / "runs"), str(tmp_path / "runs" / "1"))
    monkeypatch.chdir(tmp_path)
    return python, bash


def test_readme_sampling_example_runs(tiny_run, tmp_path, monkeypatch, capsys):
    python, _ = _readme_section(tmp_path, monkeypatch, tiny_run)
    namespace: dict = {}
    exec(compile(python, "README.md", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(line.startswith("john is ") for line in lines[:3])
    assert len(lines[3].split()) == 8 and namespace["out"].shape == (3, 8)
    assert namespace["s"].num_tokens.tolist() == [6, 6]


def test_readme_sampling_commands_run(tiny_run, tmp_path, monkeypatch, capsys):
    import shlex
    import subprocess

    _, bash = _readme_section(tmp_path, monkeypatch, tiny_run)
    for line in bash.strip().splitlines():
        if line.startswith("printf"):
            subprocess.run(line, shell=True, check=True)
            continue
        argv = shlex.split(line)
        assert argv[0] == "jrnn" and main(argv[1:]) == 0, (line, capsys.readouterr().err)
    out = capsys.readouterr().out.splitlines()
    assert out[-4].endswith("\tjohn is driving a car") and out[-3].endswith("\tjohn is driving a cat")
    assert json.loads(out[-1])["sentence"] == "john is driving a cat"
