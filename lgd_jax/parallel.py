"""Data parallelism with ``jax.sharding``: one mesh axis over the batch, parameters replicated.

Training, evaluation and detection fitting use the same three pieces::

    mesh = parallel.make_mesh()                  # every device of every process
    state = parallel.replicate(state, mesh)      # parameters and optimiser state on all devices
    batch = parallel.shard_batch(batch, mesh)    # samples split over the "data" axis

Everything else is plain ``jax.jit``: XLA's SPMD partitioner runs each device's share of the
per-sample work (body model, objective gradient, network) locally and inserts the all-reduces
that batch means need — the loss, the parameter gradients, and BatchNorm's statistics, which are
therefore those of the global batch, exactly as on one device. No ``pmap``.

Several hosts: call :func:`initialize_distributed` first (train.py does, from its flags or the
environment); ``jax.devices()`` then lists the devices of every process and the same code runs on
all of them.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class ShardingError(ValueError):
  """A batch or device count that cannot be split; the message names the setting."""


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-process run when asked to; returns whether it did.

  Arguments win over the environment variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. Under SLURM (``SLURM_NTASKS`` > 1) JAX reads the
  cluster's variables itself. A single process with nothing set does nothing.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  nproc = num_processes or _env_int("JAX_NUM_PROCESSES")
  pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  slurm = (_env_int("SLURM_NTASKS") or 1) > 1
  if not address and not slurm and not (nproc and nproc > 1):
    return False
  if address and nproc and nproc > 1 and pid is None:
    raise ShardingError("--process_id (or JAX_PROCESS_ID): expected this process's index in "
                        f"0..{nproc - 1} for a run of {nproc} processes")
  kwargs = {}
  if address:
    kwargs.update(coordinator_address=address, num_processes=nproc, process_id=pid)
  jax.distributed.initialize(**kwargs)
  return True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ShardingError(f"{name}: expected an integer, got {value!r}") from None


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (0 = all devices of all processes)."""
  devices = jax.devices()
  n = len(devices) if num_devices in (0, None) else int(num_devices)
  if n < 1 or n > len(devices):
    raise ShardingError(f"num_devices: expected 0 (all) or 1..{len(devices)} "
                        f"({len(devices)} {devices[0].platform} devices here), got {num_devices}")
  if n < len(devices) and jax.process_count() > 1:
    raise ShardingError("num_devices: a multi-process run uses every device (set it to 0)")
  return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Raises :class:`ShardingError` unless the batch splits evenly over the mesh."""
  n = mesh.devices.size
  if int(batch_size) % n:
    raise ShardingError(f"{what}: {batch_size} does not divide by the {n} devices of the mesh; "
                        f"use a multiple of {n} (or set num_devices)")


def replicate(tree, mesh: Mesh):
  """Puts every array of ``tree`` on all devices of ``mesh`` (unchanged on a one-device mesh of
  the default device, so one-device runs share the programs of plain calls)."""
  if mesh.devices.size == 1 and mesh.devices.flat[0] == jax.devices()[0]:
    return tree
  return jax.device_put(tree, replicated(mesh))


def shard_batch(tree, mesh: Mesh):
  """Splits every array of ``tree`` along its leading axis over ``mesh``.

  A batch whose size does not divide by the device count (e.g. the last, short batch of an
  evaluation) is replicated instead: the same results, on one device's worth of parallelism.
  """
  sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
  n = mesh.devices.size
  if n == 1 or any(s % n for s in sizes):
    return replicate(tree, mesh)
  return jax.device_put(tree, data_sharding(mesh))


def constrain_batch(tree, mesh: Mesh | None):
  """Inside jit: marks a batch computed in the program as split over ``mesh`` (no-op for None)."""
  if mesh is None or mesh.devices.size == 1:
    return tree
  return jax.lax.with_sharding_constraint(tree, data_sharding(mesh))


def to_host(tree):
  """NumPy copies of a pytree's arrays; a replicated array spanning several processes (not fully
  addressable) is read from this process's first shard."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def is_primary() -> bool:
  """Whether this process writes logs and metrics (process 0)."""
  return jax.process_index() == 0
