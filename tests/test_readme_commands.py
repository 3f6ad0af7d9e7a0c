"""The README's first command runs as written (after its install step), on the built-in corpus."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_train_score_next_chain(tmp_path):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    first = re.findall(r"```bash\n(.*?)```", text, re.S)[0].strip()
    assert first.startswith("python3 -m venv .venv") and "pip install ." in first
    # Everything after the install step, with `jrnn` as this interpreter's `python -m jrnn`.
    commands = first.split("pip install . && ", 1)[1]
    assert commands.startswith("jrnn train && jrnn score")
    script = commands.replace("jrnn ", f"{sys.executable} -m jrnn ")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("JRNN_DATA", None)
    r = subprocess.run(script, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(l.startswith("test ppl") for l in lines)
    ranked = [l for l in lines if l[:2] in ("1.", "2.")]
    assert ranked[0].startswith("1. 'john is driving a car'"), r.stdout
    assert os.path.isfile(tmp_path / "runs" / "latest")
