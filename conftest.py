"""Test-session setup: float64 everywhere, so loop-reference comparisons can be tight.

Compiled programs go to a persistent cache shared by the test processes (the
xdist workers and the command-line subprocesses they start): many tests
compile the same train steps; and they are compiled without XLA's backend
optimizations (see below).  Set ``JAX_COMPILATION_CACHE_DIR`` to use
another place; the cache only ever saves compile time.
"""

import os
import pathlib

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parent / ".pytest_cache" / "jax-compile"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# XLA's backend (LLVM) optimizations off: compiling is most of the suite's time on a CI
# machine with a cold cache (the suite took 654 s instead of 822-907 s on the 2-core VM,
# all passing), the tests' programs are tiny, and every comparison is with a reference at a
# tolerance or with another program compiled alike.  The subprocesses inherit it.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after the cache settings: JAX reads them at import)

jax.config.update("jax_enable_x64", True)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny run directory (``tests.helpers.TINY_TRAIN``), trained once per test process;
    tests read it and copy what they change."""
    from jrnn.cli import main
    from tests.helpers import TINY_TRAIN

    out = str(tmp_path_factory.mktemp("tiny") / "run")
    assert main(["train", *TINY_TRAIN, "--out", out]) == 0
    return out
