"""``jrnn export``: the scoring and next-token functions as serialized StableHLO that a
program with JAX alone (no jrnn import) loads, giving jrnn's numbers."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jrnn
from jrnn.cli import main
from jrnn.models.export import export_model
from jrnn.training.inference import load_for_inference

TOKENS = [[0, 5, 7, 9, 3, 0], [0, 2, 2, 0, 0, 0], [0, 11, 4, 6, 8, 1]]

LOADER = """
import json, sys
import jax.numpy as jnp, numpy as np
from jax import export
d = sys.argv[1]
info = json.load(open(d + "/model.json"))
score = export.deserialize(open(d + "/token_log_probs.stablehlo", "rb").read())
step = export.deserialize(open(d + "/next_log_probs.stablehlo", "rb").read())
tokens = jnp.array(json.loads(sys.argv[2]), jnp.int32)
state = tuple(jnp.zeros((tokens.shape[0], *s), dt) for s, dt in zip(info["state_shapes"], info["state_dtypes"]))
steps = []
for i in range(tokens.shape[1] - 1):
    state, lp = step.call(state, tokens[:, i])
    steps.append(np.take_along_axis(np.asarray(lp), np.asarray(tokens[:, i + 1])[:, None], 1)[:, 0])
print(json.dumps({"score": np.asarray(score.call(tokens)).tolist(),
                  "score_short": np.asarray(score.call(tokens[:2, :3])).tolist(),
                  "steps": np.stack(steps, 1).tolist(), "jrnn_loaded": "jrnn" in sys.modules}))
"""


def test_the_exported_functions_load_with_jax_alone_and_equal_jrnn(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "exported")
    assert main(["export", tiny_run, "--out", out, "--platforms", "cpu"]) == 0
    assert sorted(os.listdir(out)) == ["README.txt", "model.json", "next_log_probs.stablehlo",
                                       "token_log_probs.stablehlo", "vocab.json"]
    r = subprocess.run([sys.executable, "-c", LOADER, out, json.dumps(TOKENS)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["jrnn_loaded"] is False
    model, params, vocab, _ = load_for_inference(tiny_run)
    want = np.asarray(jrnn.token_log_probs(model, params, jnp.array(TOKENS, jnp.int32)))
    np.testing.assert_allclose(got["score"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["steps"], want, rtol=1e-5, atol=1e-5)  # one step at a time
    np.testing.assert_allclose(got["score_short"], want[:2, :2], rtol=1e-5, atol=1e-5)  # b, t symbolic
    assert json.load(open(os.path.join(out, "vocab.json"))) == list(vocab.itos)


def test_the_readme_txt_example_runs(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["export", tiny_run, "--out", out, "--platforms", "cpu"]) == 0
    text = open(os.path.join(out, "README.txt")).read()
    code = text.split("\n\n")[1].replace("\n    ", "\n").strip()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip()) < 0


@pytest.mark.parametrize("kind", ["nnlm", "gru", "minlstm"])
def test_every_kind_exports_for_cpu_and_cuda(kind):
    if kind == "nnlm":
        model = jrnn.nnlm(20, embed_size=8, hidden_size=8, context_size=3)
    else:
        model = jrnn.rnn_lm(20, cell=kind, embed_size=8, hidden_size=8, num_layers=2)
    params = model.init(jax.random.PRNGKey(3))
    files = export_model(model, params)  # lowered for the CUDA platform too, on this CPU
    assert files["platforms"] == ["cpu", "cuda"]
    tokens = jnp.array([row[:5] for row in TOKENS], jnp.int32)
    got = export.deserialize(files["token_log_probs"]).call(tokens)
    np.testing.assert_allclose(got, jrnn.token_log_probs(model, params, tokens), rtol=1e-5, atol=1e-5)


def test_export_refusals_are_one_line(tiny_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", tiny_run, "--out", str(taken)]) == 2
    assert capsys.readouterr().err.strip() == f"jrnn: error: {taken} already exists; jrnn export writes a new directory"
    assert (taken / "keep.txt").read_text() == "mine"
    assert main(["export", tiny_run, "--out", str(tmp_path / "y"), "--platforms", "cpu,gpux"]) == 2
    assert "--platforms takes cpu, cuda, rocm and tpu" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert sorted(p for p in os.listdir(tmp_path)) == ["taken"]  # nothing half-written left


def test_readme_export_block_runs(tmp_path):
    """The README's export commands as written (flatbuffers is already installed here)."""
    import re

    from tests.helpers import TINY_TRAIN, subprocess_env

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    block = re.findall(r"```bash\n(.*?)```", text.split("### A model for programs without jrnn", 1)[1], re.S)[0]
    lines = [line for line in block.splitlines() if not line.startswith("pip install")]
    assert lines[0].startswith("jrnn export --out exported")
    env = subprocess_env()
    jrnn_cmd = f"{sys.executable} -m jrnn "
    assert subprocess.run([sys.executable, "-m", "jrnn", "train", *TINY_TRAIN], cwd=tmp_path, env=env,
                          capture_output=True, timeout=300).returncode == 0
    script = "\n".join(lines).replace("python ", "PYTHON ").replace("jrnn ", jrnn_cmd).replace(
        "PYTHON ", f"{sys.executable} ")
    r = subprocess.run(script, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 0


def test_a_model_of_the_users_own_cell_exports():
    cell = jrnn.elman(6, activation=lambda z: jnp.tanh(z) * 0.9)  # a Python callable
    model = jrnn.rnn_lm(20, cell=cell, embed_size=8, num_layers=1)
    params = model.init(jax.random.PRNGKey(4))
    files = export_model(model, params, platforms=("cpu",))
    tokens = jnp.array([row[:5] for row in TOKENS], jnp.int32)
    got = export.deserialize(files["token_log_probs"]).call(tokens)
    np.testing.assert_allclose(got, jrnn.token_log_probs(model, params, tokens), rtol=1e-5, atol=1e-5)
