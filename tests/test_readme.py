"""The README's library example runs and answers the lecture's question."""

import contextlib
import io
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_example_runs_and_prefers_car():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), namespace)
    lp = np.asarray(namespace["jrnn"].log_prob(
        namespace["model"], namespace["state"].params, namespace["tokens"], namespace["lengths"]))
    assert lp.shape == (2,) and lp[0] > lp[1] + 1.0, out.getvalue()


def test_readme_own_model_example_runs(tmp_path, monkeypatch):
    """The "Your own cell, model and optimizer" block, run as written (in a scratch folder)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "jrnn.fit(" in b][0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.complete and os.path.exists(os.path.join(result.run_dir, "best.ckpt"))
    assert result.test_ppl < len(namespace["corpus"].vocab) / 2
