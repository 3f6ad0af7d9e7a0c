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

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import optax
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


def initialize_multihost(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    local_device_ids: Optional[Sequence[int]] = None,
) -> tuple[int, int]:
    """Join a multi-host run: ``jax.distributed.initialize``, then ``(process_index, process_count)``.

    Call it once in every process before anything else touches JAX devices.
    On clusters JAX knows (SLURM, Open MPI, Cloud TPU, Kubernetes via its
    env), all arguments can be left out and are detected; otherwise give the
    same ``coordinator_address`` (``"host:port"`` of process 0) and
    ``num_processes`` to every process and each its own ``process_id``.
    ``local_device_ids`` restricts a process to some of its local devices
    (e.g. one process per GPU).

    Afterwards ``jax.devices()`` lists every host's devices, so
    :func:`make_mesh` spans them all, and each process feeds its own part of
    the batch through :func:`shard_batch`.  Not exercised by the test-suite
    (it needs several processes and a network); see :mod:`jrnn.distributed`.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return jax.process_index(), jax.process_count()
