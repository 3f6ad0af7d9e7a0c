"""Data-parallel training over many devices (and hosts) with ``jax.sharding``.

The batch is split along its first axis over a one-dimensional device mesh
whose axis is named ``"data"``; parameters and optimizer state are
replicated on every device.  The train step itself is
:func:`jrnn.make_train_step`'s, unchanged: it is compiled once for the
global batch with those shardings, and XLA partitions it (GSPMD), each
device computing the loss and gradients of its own slice and an all-reduce
summing the gradients before the (replicated) update.  The loss, the
metrics and the update are those of one device running the whole batch, up
to the order of floating-point sums; dropout masks are the same too, since
JAX's partitionable threefry draws random bits independently of sharding.

Multi-host: call :func:`initialize_multihost` first thing in every process,
then build the mesh over ``jax.devices()`` (all devices of all hosts).  Each
process feeds its own slice of the global batch (its ``B / process_count``
rows): :func:`shard_batch` assembles the global array from the process-local
pieces, and a replicated state must hold the same values in every process
(initialize it from the same key).

Single host, many CPU "devices" for testing::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python train.py

Example:
  >>> import jax, jax.numpy as jnp, optax, jrnn
  >>> from jrnn import distributed
  >>> mesh = distributed.make_mesh()
  >>> model = jrnn.rnn_lm(20, embed_size=8, hidden_size=8, num_layers=1)
  >>> opt = optax.sgd(0.5)
  >>> state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
  >>> step = distributed.make_sharded_train_step(model, opt, mesh=mesh, clip_norm=5.0)
  >>> x = jnp.arange(12 * jax.device_count()).reshape(-1, 6) % 20
  >>> state, carry, m = step(state, x, (x + 1) % 20)
  >>> tuple(carry[0].h.sharding.spec), m["loss"].sharding.is_fully_replicated
  (('data',), True)
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jrnn.models.lm import LanguageModel
from jrnn.training.step import make_train_step

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "batch_sharding",
    "replicated_sharding",
    "shard_batch",
    "replicate",
    "make_sharded_train_step",
    "initialize_multihost",
    "DistributedError",
    "cluster_environment",
    "is_multiprocess",
    "process_rows",
    "to_host",
    "any_process",
    "broadcast_text",
    "GroupLostError",
    "rendezvous",
    "check_same_options",
]

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: ``jax.devices()``, every host's).

    Example:
      >>> from jrnn import distributed
      >>> distributed.make_mesh().axis_names
      ('data',)
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device")
    return Mesh(np.asarray(devices), (axis_name,))


def batch_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """First axis split over ``axis_name``, the others whole."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def _place(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # Multi-host: `x` is this process's piece; the global array is assembled from all of them.
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def shard_batch(tree: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Put every leaf of ``tree`` on ``mesh`` split along its first (batch) axis.

    Works for tokens ``int[B, T]``, masks and carries (``[B, H]`` leaves).
    Leaves already sharded that way are returned as they are.  With several
    processes each passes its local rows and gets the global array back.

    Raises:
      ValueError: when a leaf's batch size does not divide over the devices.
    """
    sharding = batch_sharding(mesh, axis_name)
    n = mesh.shape[axis_name]
    local_n = n // jax.process_count() if jax.process_count() > 1 else n

    def put(x):
        shape = np.shape(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x  # already a global array: its layout is the caller's choice
        if not shape:
            raise ValueError("shard_batch needs arrays with a batch axis, got a scalar")
        if shape[0] % local_n:
            raise ValueError(
                f"batch size {shape[0]} does not divide over {local_n} devices on axis "
                f"{axis_name!r}; use a batch size that is a multiple of {local_n}"
            )
        return _place(x, sharding)

    return jax.tree_util.tree_map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a full copy of every leaf of ``tree`` (params, optimizer state) on every device."""
    sharding = replicated_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: _place(x, sharding), tree)


def make_sharded_train_step(
    model: LanguageModel,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Optional[Mesh] = None,
    axis_name: str = DATA_AXIS,
    clip_norm: Optional[float] = None,
    batch_mean: bool = True,
    skip_nonfinite: bool = False,
    donate: bool = True,
) -> Callable:
    """:func:`jrnn.make_train_step`, data-parallel over ``mesh``.

    Same signature, ``step(state, inputs, targets, carry=None, mask=None) ->
    (state, carry, metrics)``, and the same metrics.  ``inputs``, ``targets``,
    ``mask`` and ``carry`` are split over ``axis_name`` along the batch axis
    (NumPy or unsharded arrays are placed by :func:`shard_batch`; their batch
    size must be a multiple of the number of devices); ``state`` is
    replicated (placed by :func:`replicate` on the first call).  The returned
    carry stays sharded and feeds the next step without moving.

    Args:
      model, optimizer, clip_norm, batch_mean, skip_nonfinite, donate: as
        :func:`jrnn.make_train_step`.
      mesh: the device mesh; default :func:`make_mesh` over ``jax.devices()``.
      axis_name: the mesh axis the batch is split over.
    """
    mesh = make_mesh(axis_name=axis_name) if mesh is None else mesh
    if axis_name not in mesh.axis_names:
        raise ValueError(f"mesh has axes {mesh.axis_names}, not {axis_name!r}")
    inner = make_train_step(
        model, optimizer, clip_norm=clip_norm, batch_mean=batch_mean,
        skip_nonfinite=skip_nonfinite, donate=donate, jit=False,
    )
    rep, data = replicated_sharding(mesh), batch_sharding(mesh, axis_name)
    # A sharding given for a pytree applies to all its leaves (a carry=None has none).
    compiled = jax.jit(
        inner,
        in_shardings=(rep, data, data, data, data),
        out_shardings=(rep, data, rep),
        donate_argnums=(0, 3) if donate else (),
    )

    def step(state, inputs, targets, carry=None, mask=None):
        state = replicate(state, mesh)
        inputs, targets, carry, mask = shard_batch((inputs, targets, carry, mask), mesh, axis_name)
        return compiled(state, inputs, targets, carry, mask)

    step.mesh = mesh
    step.jitted = compiled
    return step


class DistributedError(RuntimeError):
    """A process group that cannot form or lost a member, in one line."""


# Environment variables by which a scheduler says "you are one of several processes";
# jax.distributed.initialize() reads the rest of the cluster's description from them.
def cluster_environment(environ: Optional[dict] = None) -> Optional[str]:
    """The cluster the environment describes, when it runs more than one process.

    ``"jax"`` (``JAX_COORDINATOR_ADDRESS`` set), ``"slurm"`` (``srun`` with
    more than one task), ``"openmpi"`` (``mpirun -n`` > 1), ``"cloud-tpu"``
    (a TPU pod slice with several hosts) or ``"kubernetes"`` (a JobSet);
    ``None`` for a single process.  In those environments
    ``jax.distributed.initialize()`` needs no arguments.

    Example:
      >>> from jrnn.training.distributed import cluster_environment
      >>> cluster_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"})
      'slurm'
      >>> cluster_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
      True
    """
    env = os.environ if environ is None else environ

    def count(name):
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "jax"
    if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and count("SLURM_NTASKS") > 1:
        return "slurm"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "cloud-tpu"
    if env.get("JOBSET_NAME") and env.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    return None


def initialize_multihost(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    local_device_ids: Optional[Sequence[int]] = None,
    timeout_s: int = 60,
    options: Optional[dict] = None,
) -> tuple[int, int]:
    """Join a multi-process run: ``jax.distributed.initialize``, then ``(process_index, process_count)``.

    Call it once in every process before anything else touches JAX devices.
    On clusters JAX knows (SLURM, Open MPI, Cloud TPU, Kubernetes; see
    :func:`cluster_environment`) all arguments can be left out; otherwise give
    the same ``coordinator_address`` (``"host:port"`` of process 0) and
    ``num_processes`` to every process and each its own ``process_id``.
    ``local_device_ids`` restricts a process to some of its local devices
    (one process per GPU).

    ``timeout_s`` bounds both the wait for the whole group to join and the
    silence after which a member counts as dead: a group that cannot form, or
    loses a process, fails within about that long instead of hanging.

    Afterwards ``jax.devices()`` lists every process's devices, so
    :func:`make_mesh` spans them all, and each process feeds its own rows of
    the batch (:func:`process_rows`) through :func:`shard_batch`.  On CPUs
    the collectives go over Gloo (TCP).  Tested with 2 and 4 processes on one
    machine in ``tests/test_multiprocess.py``.

    ``options`` (JSON-able: the settings every process must share) are
    compared with process 0's at the join (:func:`rendezvous` with an explicit
    coordinator, :func:`check_same_options` under a scheduler); a difference
    is refused on every process before any training collective runs.

    Raises:
      DistributedError: the group did not form (a coordinator that cannot be
        reached, a process that never joined, two processes with one id, a
        difference in ``options``), in one line.
    """
    if coordinator_address is not None and num_processes is not None and process_id is not None:
        # XLA aborts the whole process (a multi-line C++ log, exit 134) when the group cannot
        # form: a coordinator that is not there, a process that never joins, two processes
        # with one id.  A rendezvous in Python checks all of that first, in one line.
        rendezvous(coordinator_address, num_processes, process_id, options, timeout_s)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=int(timeout_s),
            heartbeat_timeout_seconds=max(5, int(timeout_s) // 3),
            shutdown_timeout_seconds=int(timeout_s),
        )
    except Exception as e:  # XLA's errors carry no stable type: report the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = coordinator_address or "the coordinator the environment names"
        raise DistributedError(f"could not join the process group at {where} within "
                               f"{timeout_s}s ({first})") from None
    if options is not None and coordinator_address is None:
        check_same_options(options)  # a scheduler's group: compared over the group's collectives
    return jax.process_index(), jax.process_count()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"the coordinator address must be host:port (a port 1..65535), "
                               f"got {address!r}")
    return host.strip("[]"), int(port)


def _differences(lead: dict, other: dict, who: str) -> list[str]:
    """``--lr (process 1: 0.5, process 0: not given)`` for each option that differs."""
    def shown(d, k):
        return "not given" if d.get(k) is None else repr(d[k])
    return [f"{k} ({who}: {shown(other, k)}, process 0: {shown(lead, k)})"
            for k in sorted(set(lead) | set(other)) if lead.get(k) != other.get(k)]


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


def _receive(sock: socket.socket, deadline: float, limit: int = 1 << 20) -> Optional[dict]:
    """One JSON line from ``sock`` before ``deadline``; None if it closed or sent garbage."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or len(data) > limit:
            return None
        sock.settimeout(min(left, 1.0))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    try:
        message = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def rendezvous(address: str, num_processes: int, process_id: int, options: Optional[dict],
               timeout_s: float) -> None:
    """Check, before JAX's coordination service starts, that the group can form.

    Process 0 listens on the coordinator's port; every other process connects
    and says its id and its ``options`` (a JSON-able dict of the settings that
    must agree).  Process 0 answers all of them with one verdict: the group is
    complete, each id 1..N-1 came once, and every process's options equal its
    own; or the reason it is not, which every process raises.  Then process 0
    closes the port and ``jax.distributed.initialize`` opens it again.

    Raises:
      DistributedError: in one line, on every process that got that far: the
        address is not ``host:port``, the port is taken (another process 0),
        no process 0 answered, processes did not join within ``timeout_s``,
        an id came twice, or options differ (naming them).
    """
    host, port = _split_address(address)
    mine = options or {}
    deadline = time.monotonic() + timeout_s
    if process_id == 0:
        _lead_rendezvous(address, port, num_processes, mine, deadline, timeout_s)
        return
    sock = None
    while sock is None:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(f"could not join the process group at {address} within "
                                       f"{timeout_s}s (no coordinator answers there: {e})") from None
            time.sleep(0.25)
    with sock:
        try:
            _send(sock, {"jrnn": "join", "id": process_id, "of": num_processes, "options": mine})
        except OSError as e:
            raise DistributedError(f"process 0 at {address} closed the connection ({e})") from None
        # Process 0 waits up to its own timeout for the others; allow for a later start.
        verdict = _receive(sock, deadline + timeout_s)
    if verdict is None:
        raise DistributedError(f"process 0 at {address} gave no answer (is it a jrnn train of the "
                               f"same version, and did it stop?)")
    if not verdict.get("ok"):
        raise DistributedError(str(verdict.get("error", "the group did not form"))[:500])


def _lead_rendezvous(address, port, n, mine, deadline, timeout_s) -> None:
    server = socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if server.family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("", port))
        server.listen(max(n, 8))
    except OSError as e:
        server.close()
        raise DistributedError(f"process 0 cannot listen on port {port} of {address} ({e.strerror or e}); "
                               "is another process 0 of a group running there?") from None
    joined: dict[int, socket.socket] = {}
    others: list[socket.socket] = []
    error = None
    try:
        server.settimeout(0.5)
        while len(joined) < n - 1 and error is None:
            if time.monotonic() >= deadline:
                missing = [str(i) for i in range(1, n) if i not in joined]
                error = (f"the process group did not form within {timeout_s}s: process"
                         f"{'es' if len(missing) > 1 else ''} {', '.join(missing)} of {n} never joined "
                         f"(raise --join-timeout if they start later)")
                break
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            hello = _receive(conn, min(deadline, time.monotonic() + 10))
            if hello is None or hello.get("jrnn") != "join":
                conn.close()  # not one of ours (a port scanner, an old client): ignore it
                continue
            pid, count = hello.get("id"), hello.get("of")
            if count != n:
                others.append(conn)
                error = f"process {pid} was started with --num-processes {count}, process 0 with {n}"
            elif not isinstance(pid, int) or not 0 < pid < n:
                others.append(conn)
                error = f"a process joined with id {pid!r}; ids are 1..{n - 1} besides process 0"
            elif pid in joined:
                others.append(conn)
                error = f"two processes were started with --process-id {pid}; each needs its own"
            else:
                joined[pid] = conn
                differ = _differences(mine, hello.get("options") or {}, f"process {pid}")
                if differ:
                    error = (f"process {pid} was started with options that differ from process 0's: "
                             + "; ".join(differ)[:400] + " (every process needs the same options)")
        verdict = {"ok": error is None, "error": error}
        for conn in [*joined.values(), *others]:
            try:
                _send(conn, verdict)
            except OSError:
                pass
        for conn in joined.values():  # the others close first, so the port is free again at once
            _receive(conn, time.monotonic() + 2.0)
    finally:
        for conn in [*joined.values(), *others]:
            conn.close()
        server.close()
    if error is not None:
        raise DistributedError(error)


def check_same_options(options: dict) -> None:
    """Compare ``options`` with process 0's over the group (after it formed); a difference is
    raised as :class:`DistributedError` on every process (every process must call this)."""
    if not is_multiprocess():
        return
    theirs = json.loads(broadcast_text(json.dumps(options, sort_keys=True)))
    differ = _differences(theirs, options, f"process {jax.process_index()}")
    (anyone,) = any_process(bool(differ))
    if differ:
        raise DistributedError(f"process {jax.process_index()} was started with options that differ "
                               f"from process 0's: " + "; ".join(differ)[:400])
    if anyone:
        raise DistributedError("another process of the group was started with different options "
                               "(every process needs the same options)")


def is_multiprocess() -> bool:
    """True when this process is one of several (after :func:`initialize_multihost`)."""
    return jax.process_count() > 1


def process_rows(batch_size: int, mesh: Mesh, axis_name: str = DATA_AXIS) -> slice:
    """The rows of a global batch of ``batch_size`` that this process feeds.

    The batch is split over the mesh's devices in order; a process owns the
    rows of its own devices, one contiguous block (``jax.devices()`` lists
    each process's devices together).  One process: every row.

    Raises:
      ValueError: ``batch_size`` does not divide over the devices.
    """
    n = mesh.shape[axis_name]
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} does not split over {n} devices; "
                         f"use a multiple of {n}")
    index_map = batch_sharding(mesh, axis_name).addressable_devices_indices_map((batch_size,))
    starts = sorted(idx[0].start or 0 for idx in index_map.values())
    stops = sorted(batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values())
    if any(b != a for a, b in zip(stops[:-1], starts[1:])):
        raise ValueError("this process's devices do not hold one contiguous block of the batch")
    return slice(starts[0], stops[-1])


class GroupLostError(RuntimeError):
    """A collective across processes failed: another process of the group died or left."""


def _collective(fn, *args):
    """``fn(*args)``, with any failure of a cross-process collective as :class:`GroupLostError`
    (Gloo's failures reach Python as ValueError or JaxRuntimeError, depending on the op)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 -- re-raised with its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GroupLostError(first) from None


def to_host(tree: Any) -> Any:
    """Every leaf as a NumPy array in this process.

    Sharded leaves (a carry split over processes) are gathered from every
    process: then every process must call this at the same point.
    Replicated and local leaves are copied without communication.
    """
    def get(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(_collective(multihost_utils.process_allgather, x, True))

    return jax.tree_util.tree_map(get, tree)


def any_process(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is true in at least one process: the same answer in
    every process (one collective; every process must call it at the same point)."""
    mine = np.asarray([bool(f) for f in flags])
    if not is_multiprocess():
        return tuple(bool(f) for f in mine)
    every = np.asarray(_collective(multihost_utils.process_allgather, mine)).reshape(-1, len(mine))
    return tuple(bool(f) for f in every.any(axis=0))


def broadcast_text(text: str) -> str:
    """Process 0's ``text`` in every process (a collective; others pass anything)."""
    if not is_multiprocess():
        return text
    data = text.encode() if jax.process_index() == 0 else b""
    n = int(_collective(multihost_utils.broadcast_one_to_all, np.asarray(len(data), np.int32)))
    buf = np.zeros(max(n, 1), np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    return bytes(np.asarray(_collective(multihost_utils.broadcast_one_to_all, buf))[:n]).decode()
