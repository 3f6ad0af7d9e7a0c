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
