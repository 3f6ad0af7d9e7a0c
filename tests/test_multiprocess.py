"""Several processes train one model over jax.distributed (127.0.0.1, one CPU device each).

Each test launches real ``jrnn train`` processes that join a group through a
coordinator on a free local port, as a user would on two machines, and checks
the group run against a one-process run of the same global batch: the final
parameters and perplexities agree to float32 tolerance, only process 0 writes
files, ``--resume`` continues the group's run, and a process that dies makes
the others stop with one line instead of hanging.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed
from jrnn.training.fit import load_for_inference

from tests.helpers import subprocess_env

TINY = ["--hidden-size", "16", "--embed-size", "16", "--batch-size", "8", "--bptt", "10",
        "--quiet"]
# For the runs compared with one process: a batch of 20 (divides over 2 and 4 processes;
# evaluation uses 10 rows) and windows of 7 cut the built-in valid and test sets into
# whole windows (994 and 1001 tokens a row), so each process compiles one evaluation
# program fewer than with the last window short.
TINY_EQ = ["--hidden-size", "16", "--embed-size", "16", "--batch-size", "20", "--bptt", "7",
           "--quiet"]


def _env(quick_compile=True):
    # (quick_compile=False: a full epoch of the default model, running rather than compiling)
    return subprocess_env(quick_compile)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n, args):
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "jrnn", "train", *args, "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", str(n), "--process-id", str(i)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)]


def _group(n, args, timeout=120):
    procs = _launch(n, args)
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [p.returncode for p in procs], outs


def _single(args):
    return subprocess.run([sys.executable, "-m", "jrnn", "train", *args], env=_env(),
                          capture_output=True, text=True, timeout=120)


def _params(run_dir):
    _, raw = ckpt.load_raw(os.path.join(run_dir, "last.ckpt"))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(raw["params"])], raw


def _same_run(group_dir, single_dir):
    (pg, rg), (ps, rs) = _params(group_dir), _params(single_dir)
    assert int(rg["step"]) == int(rs["step"])
    assert len(pg) == len(ps)
    for a, b in zip(pg, ps):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    sg = json.load(open(os.path.join(group_dir, "summary.json")))
    ss = json.load(open(os.path.join(single_dir, "summary.json")))
    assert len(sg["history"]) == len(ss["history"])
    for hg, hs in zip(sg["history"], ss["history"]):
        np.testing.assert_allclose(hg["train_ppl"], hs["train_ppl"], rtol=1e-4)
        np.testing.assert_allclose(hg["valid_ppl"], hs["valid_ppl"], rtol=1e-4)
    np.testing.assert_allclose(sg["test_ppl"], ss["test_ppl"], rtol=1e-4)
    return sg


def _only_run_files(run_dir):
    """Process 0 wrote the run's files once, and no process wrote anything else there."""
    from jrnn.training.runs import RUN_FILES

    found = set(os.listdir(run_dir))
    assert {"best.ckpt", "last.ckpt", "summary.json", "config.toml", "metrics.jsonl"} <= found, found
    assert found <= set(RUN_FILES), found


def _test_ppl_lines(outs):
    return [line for out, _ in outs for line in out.splitlines() if "test ppl" in line]


def test_two_processes_equal_one_and_resume_the_group_run(tmp_path):
    group, single = str(tmp_path / "group"), str(tmp_path / "single")
    common = [*TINY_EQ, "--max-windows", "3", "--save-every", "0"]
    codes, outs = _group(2, ["--out", group, "--epochs", "1", *common])
    assert codes == [0, 0], outs
    # Only process 0 wrote, and only the one run's files.
    _only_run_files(group)
    assert not (tmp_path / "runs").exists()
    codes, outs = _group(2, ["--out", group, "--resume", "--epochs", "2", *common])
    assert codes == [0, 0], outs
    assert "resuming" in outs[0][1] and "resuming" not in outs[1][1]  # one voice
    lines = _test_ppl_lines(outs)
    assert len(lines) == 2 and lines[0].startswith("process 0/2") and lines[1].startswith("process 1/2")
    assert lines[0].split("|")[0].split(": ")[1] == lines[1].split("|")[0].split(": ")[1]

    r = _single(["--out", single, "--epochs", "2", *common])
    assert r.returncode == 0, r.stderr
    summary = _same_run(group, single)
    assert summary["processes"] == 2
    _only_run_files(group)



def test_a_batch_that_does_not_split_over_the_group_is_refused(monkeypatch, tmp_path):
    """Several processes always train data-parallel over every process's devices; a batch
    that does not divide over them is refused before the first step (here with a
    stand-in for a mesh of 2 devices, the group's mesh)."""
    import types

    from jrnn.data import builtin_corpus
    from jrnn.training.config import DEFAULT
    from jrnn.training.fit import FitError, fit

    monkeypatch.setattr(distributed, "make_mesh", lambda: types.SimpleNamespace(size=2))
    with pytest.raises(FitError) as e:
        fit(DEFAULT.replace(batch_size=5), builtin_corpus(2000), str(tmp_path / "odd"),
            data_parallel=True)
    assert str(e.value) == "batch size 5 does not split over 2 devices; use a multiple of 2"


def test_four_processes_equal_one(tmp_path):
    group, single = str(tmp_path / "group"), str(tmp_path / "single")
    common = [*TINY_EQ, "--epochs", "1", "--max-windows", "3", "--cell", "gru"]
    codes, outs = _group(4, ["--out", group, *common])
    assert codes == [0, 0, 0, 0], outs
    _only_run_files(group)
    assert len(_test_ppl_lines(outs)) == 4
    r = _single(["--out", single, *common])
    assert r.returncode == 0, r.stderr
    assert _same_run(group, single)["processes"] == 4


def test_a_dead_process_stops_the_group_and_the_checkpoint_survives(tmp_path):
    out = str(tmp_path / "run")
    procs = _launch(2, ["--out", out, "--epochs", "1", "--save-every", "0", *TINY])
    last = os.path.join(out, "last.ckpt")
    deadline = time.time() + 90
    while not os.path.exists(last) and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(last), [p.communicate(timeout=5) for p in procs]
    time.sleep(1.0)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    _, err = procs[0].communicate(timeout=90)
    waited = time.time() - t0
    procs[1].communicate(timeout=10)
    assert procs[0].returncode not in (0, None)
    assert waited < 60, f"process 0 took {waited:.0f}s to give up"
    assert "Traceback" not in err, err
    assert "lost the process group" in err.strip().splitlines()[-1], err
    # The last checkpoint (written mid-epoch, with the group's carry) loads and resumes.
    model, params, vocab, meta = load_for_inference(last)
    assert meta["window"] > 0
    codes, outs = _group(2, ["--out", out, "--resume", "--max-windows", "2", "--save-every", "0"])
    assert codes == [0, 0], outs
    assert json.load(open(os.path.join(out, "summary.json")))["test_ppl"] > 1


def test_unreachable_coordinator_fails_in_one_line():
    port = _free_port()  # nobody listens there
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "jrnn", "train", "--coordinator", f"127.0.0.1:{port}",
                        "--num-processes", "2", "--process-id", "1", "--join-timeout", "2", *TINY],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"jrnn: error: could not join the process group at 127.0.0.1:{port} within 2s")
    assert time.time() - t0 < 60


@pytest.mark.parametrize("args, message", [
    (["--coordinator", "127.0.0.1:1234"], "--coordinator, --num-processes and --process-id go together"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1, got 2"),
    (["--local-device-ids", "0"], "--local-device-ids needs a process group (--coordinator ...)"),
    (["--coordinator", "notahost", "--num-processes", "2", "--process-id", "0"],
     "the coordinator address must be host:port (a port 1..65535), got 'notahost'"),
    (["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "1"],
     "the coordinator address must be host:port (a port 1..65535), got 'h:99999'"),
])
def test_group_options_are_checked_before_joining(args, message, capsys):
    from jrnn.cli import main

    assert main(["train", *args]) == 2
    assert capsys.readouterr().err.strip() == f"jrnn: error: {message}"


def test_fused_epoch_is_refused_with_several_processes(monkeypatch, tmp_path):
    from jrnn.data import builtin_corpus
    from jrnn.training.config import DEFAULT
    from jrnn.training.fit import FitError, fit

    monkeypatch.setattr(distributed, "is_multiprocess", lambda: True)
    with pytest.raises(FitError, match="with 1 processes leave it out"):
        fit(DEFAULT, builtin_corpus(200), str(tmp_path / "x"), fused_epoch=True)


def test_cluster_environment_detection():
    assert distributed.cluster_environment({}) is None
    assert distributed.cluster_environment({"OMPI_COMM_WORLD_SIZE": "4"}) == "openmpi"
    assert distributed.cluster_environment({"OMPI_COMM_WORLD_SIZE": "1"}) is None
    assert distributed.cluster_environment({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) == "jax"
    assert distributed.cluster_environment({"TPU_WORKER_HOSTNAMES": "a,b"}) == "cloud-tpu"
    assert distributed.cluster_environment({"TPU_WORKER_HOSTNAMES": "a"}) is None
    assert distributed.cluster_environment(
        {"JOBSET_NAME": "j", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kubernetes"


def test_readme_two_processes_on_one_machine_verbatim(tmp_path):
    """The README's "More than one machine" block for one machine, run as written."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = text.split("### More than one machine", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    assert "127.0.0.1" in block and block.count("jrnn train") == 2
    script = block.replace("jrnn ", f"{sys.executable} -m jrnn ")
    r = subprocess.run(script, shell=True, cwd=tmp_path, env=_env(quick_compile=False),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if "test ppl" in l]
    assert len(lines) == 2, r.stdout
    _only_run_files(tmp_path / "runs" / "pair")


# ---- the join, checked in Python before JAX's coordination service can abort ----------------

def _one_line_errors(procs, timeout=60):
    codes, lines = [], []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        codes.append(p.returncode)
        lines.append(err.strip().splitlines())
    assert all(len(l) == 1 for l in lines), lines  # one line each, no C++ log
    return codes, [l[0] for l in lines]


def test_process_0_alone_ends_in_one_line_within_the_join_timeout(capsys):
    from jrnn.cli import main

    t0 = time.time()
    assert main(["train", *TINY, "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "3",
                 "--process-id", "0", "--join-timeout", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "jrnn: error: the process group did not form within 2s: processes 1, 2 of 3 never joined "
        "(raise --join-timeout if they start later)")
    assert time.time() - t0 < 10


def test_two_processes_with_one_id_are_refused_on_every_process(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "jrnn", "train", *TINY, "--out", str(tmp_path / f"r{i}"),
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "3", "--process-id", str(pid),
         "--join-timeout", "20"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, pid in enumerate([0, 1, 1])]
    codes, lines = _one_line_errors(procs)
    assert codes == [2, 2, 2]
    assert set(lines) == {"jrnn: error: two processes were started with --process-id 1; each needs its own"}
    assert not any((tmp_path / f"r{i}").exists() for i in range(3))


def test_a_second_process_0_is_refused_in_one_line(tmp_path):
    port = _free_port()
    first = distributed.socket.socket()
    first.bind(("", port))  # what a first process 0 holds while it waits for its group
    first.listen(1)
    try:
        r = subprocess.run([sys.executable, "-m", "jrnn", "train", *TINY, "--coordinator", f"127.0.0.1:{port}",
                            "--num-processes", "2", "--process-id", "0", "--join-timeout", "5"],
                           env=_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        first.close()
    assert r.returncode == 2
    assert r.stderr.strip() == (f"jrnn: error: process 0 cannot listen on port {port} of 127.0.0.1:{port} "
                                "(Address already in use); is another process 0 of a group running there?")


def test_processes_with_different_options_are_refused_on_every_process(tmp_path):
    port = _free_port()
    extra = [[], ["--lr", "0.5", "--hidden-size", "20"]]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "jrnn", "train", *TINY, *extra[i], "--out", str(tmp_path / f"r{i}"),
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
         "--join-timeout", "20"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    codes, lines = _one_line_errors(procs)
    assert codes == [2, 2]
    assert lines[0] == lines[1] == (
        "jrnn: error: process 1 was started with options that differ from process 0's: "
        "--hidden-size (process 1: 20, process 0: 16); --lr (process 1: 0.5, process 0: not given) "
        "(every process needs the same options)")


def test_rendezvous_ignores_strangers_and_checks_the_group_size():
    import threading

    port = _free_port()
    errors = {}

    def run(pid, n):
        try:
            distributed.rendezvous(f"127.0.0.1:{port}", n, pid, {"--lr": 1}, 10)
            errors[pid] = None
        except distributed.DistributedError as e:
            errors[pid] = str(e)

    lead = threading.Thread(target=run, args=(0, 2))
    lead.start()
    for _ in range(100):  # a stranger connects and sends garbage: ignored
        try:
            with distributed.socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            break
        except OSError:
            time.sleep(0.05)
    run(1, 3)  # the wrong group size
    lead.join()
    assert errors[0] == errors[1] == "process 1 was started with --num-processes 3, process 0 with 2"
