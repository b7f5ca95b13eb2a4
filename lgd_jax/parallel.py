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
all of them. Every process computes the same values from the same seeds and files, so
:func:`replicate` and :func:`shard_batch` build each global array from this process's copy.
:func:`barrier`, :func:`announce` and :func:`gather_text` coordinate host work (one process moves a
file or builds a cache while the others wait) through the coordination service, without device
collectives; :class:`ProcessFlags` exchanges a small integer per step over the devices (the
training loop's agreed stop).
"""

from __future__ import annotations

import itertools
import os
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lgd_jax.errors import ProcessesError, UserError

DATA_AXIS = "data"


class ShardingError(UserError):
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
  if nproc and pid is not None and not 0 <= pid < nproc:
    raise ShardingError(f"--process_id (or JAX_PROCESS_ID): expected 0..{nproc - 1} for a run "
                        f"of {nproc} processes, got {pid}")
  kwargs = {}
  if address:
    kwargs.update(coordinator_address=address, num_processes=nproc, process_id=pid)
  # Training stops every process at one step on SIGINT/SIGTERM itself; JAX's preemption service
  # would catch SIGTERM and do nothing with it (a process that ignores SIGTERM until training
  # starts, and for good once it is done).
  jax.config.update("jax_enable_preemption_service", False)
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


def spans_processes(mesh: Mesh) -> bool:
  """Whether ``mesh`` holds devices of several processes (a multi-host run)."""
  return len({d.process_index for d in mesh.devices.flat}) > 1


def _put(tree, sharding: NamedSharding):
  """Places ``tree`` on ``sharding``. Within one process a plain ``device_put``; on a mesh of
  several processes each array is built from this process's copy of the whole array
  (``jax.make_array_from_process_local_data`` with the global shape: every process holds the same
  values, since they come from the same seeds and files), and arrays that already span the
  processes are resharded on their devices."""
  if not spans_processes(sharding.mesh):
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    a = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, a, a.shape)
  return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
  """Puts every array of ``tree`` on all devices of ``mesh`` (unchanged on a one-device mesh of
  the default device, so one-device runs share the programs of plain calls)."""
  if mesh.devices.size == 1 and mesh.devices.flat[0] == jax.devices()[0]:
    return tree
  return _put(tree, replicated(mesh))


def shard_batch(tree, mesh: Mesh):
  """Splits every array of ``tree`` along its leading axis over ``mesh``.

  A batch whose size does not divide by the device count (e.g. the last, short batch of an
  evaluation) is replicated instead: the same results, on one device's worth of parallelism.
  """
  sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
  n = mesh.devices.size
  if n == 1 or any(s % n for s in sizes):
    return replicate(tree, mesh)
  return _put(tree, data_sharding(mesh))


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


def multi_process() -> bool:
  """Whether this is one process of several (``jax.distributed`` joined them)."""
  return jax.process_count() > 1


# ----------------------------------------------------------------------------------------------
# Several processes: waiting for each other and sharing small values.

# How long a process waits for the others at a barrier by default (seconds).
BARRIER_TIMEOUT_S = 600
_sequence = itertools.count()  # barrier and key names: every process makes the same calls in order


def _client():
  """The ``jax.distributed`` client (None in a single process). JAX has no public accessor; Orbax
  reads the same attribute."""
  from jax._src import distributed
  return distributed.global_state.client


def _key(name: str) -> str:
  return f"lgd_jax/{next(_sequence)}/{name}"


def _waiting(name: str, who: str, timeout_s: float, e: Exception) -> ProcessesError:
  code = str(e).split(":", 1)[0].strip() or type(e).__name__  # e.g. DEADLINE_EXCEEDED
  return ProcessesError(f"{name}: {who} did not get there within {timeout_s:g} s (failed or "
                        f"hangs: see its log; {code})")


def _ms(timeout_s: float) -> int:
  return max(1, int(timeout_s * 1000))


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process has called ``barrier`` with this ``name`` (nothing to wait for in
  a single process). Every process must make the same calls in the same order.

  Raises:
    ProcessesError: not every process arrived within ``timeout_s``.
  """
  if jax.process_count() == 1:
    return
  try:
    _client().wait_at_barrier(_key(name), _ms(timeout_s))
  except Exception as e:  # the client raises its runtime error type
    raise _waiting(name, "another process", timeout_s, e) from None


def announce(name: str, text: str = "", timeout_s: float = BARRIER_TIMEOUT_S) -> str:
  """Process 0's ``text``, on every process: process 0 publishes it and goes on, the others wait
  for it (so this is also "wait until process 0 got here"). Returns ``text`` in a single process.

  Raises:
    ProcessesError: process 0 did not publish within ``timeout_s``.
  """
  if jax.process_count() == 1:
    return text
  key = _key(name)
  if jax.process_index() == 0:
    _client().key_value_set(key, text)
    return text
  try:
    return _client().blocking_key_value_get(key, _ms(timeout_s))
  except Exception as e:
    raise _waiting(name, "process 0", timeout_s, e) from None


def gather_text(name: str, text: str, timeout_s: float = BARRIER_TIMEOUT_S) -> list[str]:
  """Every process's ``text``, in process order, on every process (a barrier too).

  Raises:
    ProcessesError: not every process published within ``timeout_s``.
  """
  if jax.process_count() == 1:
    return [text]
  key = _key(name)
  client = _client()
  client.key_value_set(f"{key}/{jax.process_index()}", text)
  deadline = time.monotonic() + timeout_s
  out = []
  for p in range(jax.process_count()):
    try:
      out.append(client.blocking_key_value_get(f"{key}/{p}",
                                               _ms(deadline - time.monotonic())))
    except Exception as e:
      raise _waiting(name, f"process {p}", timeout_s, e) from None
  return out


class ProcessFlags:
  """A small integer from every process, gathered onto every process by one collective over the
  mesh's devices, without waiting for it: :meth:`send` dispatches the exchange and returns at
  once, :meth:`receive` blocks until it is done and returns the values by process.

  Each process contributes one entry per local device; the exchange is an all-gather of those
  entries, a few bytes, queued behind the work already dispatched to the devices. It is compiled
  when made, so that its first use waits for no compiler.
  """

  def __init__(self, mesh: Mesh):
    self._sharding = data_sharding(mesh)
    self._size = mesh.devices.size
    self._local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    self._owners = [d.process_index for d in mesh.devices.flat]
    arg = jax.ShapeDtypeStruct((self._size,), np.int32, sharding=self._sharding)
    self._gather = jax.jit(lambda x: x, out_shardings=replicated(mesh)).lower(arg).compile()

  def send(self, value: int) -> jax.Array:
    local = np.full((self._local,), int(value), np.int32)
    return self._gather(jax.make_array_from_process_local_data(self._sharding, local,
                                                               (self._size,)))

  def receive(self, sent: jax.Array) -> dict[int, int]:
    """{process index: its value} of an exchange started by :meth:`send`."""
    values = to_host(sent)
    return {p: int(v) for p, v in zip(self._owners, values)}
