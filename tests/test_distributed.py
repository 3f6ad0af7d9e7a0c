"""Data-parallel training on 4 CPU devices gives the loss and gradients of one device.

JAX fixes its device count when it starts, so the 4-device run happens in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set
before ``import jax``; it reports numbers as JSON and the assertions are here.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    r"""
    import json, os, sys
    assert "jax" not in sys.modules
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, optax
    import jrnn
    from jrnn.training import distributed

    out = {"device_count": jax.device_count()}
    mesh = distributed.make_mesh()
    out["mesh_size"] = int(mesh.size)

    def flat(tree):
        return [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(tree)]

    def run(kind, dropout, steps, use_mask):
        V, B, T = 13, 8, 5
        model = jrnn.rnn_lm(V, cell=kind, embed_size=6, hidden_size=7, num_layers=2,
                            dropout=dropout)
        opt = optax.sgd(1.0)  # new params = params - clipped grads: the update shows the grads
        params = model.init(jax.random.PRNGKey(0), jnp.float64)
        one = jrnn.make_train_step(model, opt, clip_norm=5.0, donate=False)
        many = distributed.make_sharded_train_step(model, opt, mesh=mesh, clip_norm=5.0,
                                                   donate=False)
        rng = np.random.default_rng(1)
        s1 = s4 = jrnn.init_train_state(params, opt, jax.random.PRNGKey(2))
        c1 = c4 = None
        res = []
        for _ in range(steps):
            x = rng.integers(0, V, (B, T)).astype(np.int32)
            y = rng.integers(0, V, (B, T)).astype(np.int32)
            mask = (rng.random((B, T)) < 0.7) if use_mask else None
            n1, c1, m1 = one(s1, jnp.asarray(x), jnp.asarray(y), c1,
                             None if mask is None else jnp.asarray(mask))
            n4, c4, m4 = many(s4, x, y, c4, mask)
            g1 = jax.tree_util.tree_map(lambda a, b: a - b, s1.params, n1.params)
            g4 = jax.tree_util.tree_map(lambda a, b: a - b, s4.params, n4.params)
            res.append({
                "metrics1": {k: float(v) for k, v in m1.items() if k != "finite_leaves"},
                "metrics4": {k: float(v) for k, v in m4.items() if k != "finite_leaves"},
                "grads1": flat(g1), "grads4": flat(g4),
                "carry1": flat(c1), "carry4": flat(c4),
                "carry_spec": [tuple(leaf.sharding.spec) for leaf in jax.tree_util.tree_leaves(c4)],
                "carry_devices": [len(leaf.sharding.device_set) for leaf in jax.tree_util.tree_leaves(c4)],
                "params_replicated": all(leaf.sharding.is_fully_replicated
                                         for leaf in jax.tree_util.tree_leaves(n4.params)),
            })
            s1, s4 = n1, n4
        return res

    out["lstm"] = run("lstm", 0.0, 2, False)
    out["gru_dropout_mask"] = run("gru", 0.3, 1, True)

    model = jrnn.rnn_lm(13, embed_size=4, hidden_size=4, num_layers=1)
    step = distributed.make_sharded_train_step(model, optax.sgd(1.0), mesh=mesh)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), optax.sgd(1.0),
                                  jax.random.PRNGKey(1))
    try:
        step(state, np.zeros((6, 3), np.int32), np.zeros((6, 3), np.int32))
        out["indivisible_error"] = None
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_devices():
    env = dict(os.environ)
    # (XLA's backend optimizations off: compiling the six train steps is most of this
    # run's time, and the one-device and four-device steps compile alike.)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                        " --xla_backend_optimization_level=0").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_runs_on_four_devices(four_devices):
    assert four_devices["device_count"] == 4
    assert four_devices["mesh_size"] == 4


@pytest.mark.parametrize("case", ["lstm", "gru_dropout_mask"])
def test_same_loss_metrics_grads_and_carry_as_one_device(four_devices, case):
    for step in four_devices[case]:
        m1, m4 = step["metrics1"], step["metrics4"]
        assert set(m1) == set(m4)
        for k in m1:
            np.testing.assert_allclose(m4[k], m1[k], rtol=1e-10, atol=1e-12, err_msg=k)
        assert m1["finite"] == 1.0
        for name in ("grads", "carry"):
            a, b = step[name + "1"], step[name + "4"]
            assert len(a) == len(b) > 0
            for x, y in zip(a, b):
                np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-10, atol=1e-12,
                                           err_msg=name)
        # Some gradient is non-zero, so the comparison says something.
        assert max(np.max(np.abs(np.asarray(g))) for g in step["grads1"]) > 1e-3


def test_carry_stays_sharded_and_params_replicated(four_devices):
    step = four_devices["lstm"][-1]
    assert step["params_replicated"]
    assert all(spec == ["data"] for spec in step["carry_spec"])
    assert all(n == 4 for n in step["carry_devices"])


def test_batch_that_does_not_divide_is_a_clear_error(four_devices):
    msg = four_devices["indivisible_error"]
    assert msg is not None and "does not divide over 4 devices" in msg
