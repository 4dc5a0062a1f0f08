"""Data parallelism: one mesh over every device, batches split along its ``data`` axis.

    mesh = parallel.data_mesh()
    images = parallel.replicate(mesh, images)          # whole arrays on every device
    batch = parallel.shard_batch(mesh, batch)          # inside jit: split the batch dimension

The same code is data-parallel on several GPUs or TPU cores and on the CPU, where run.py asks
XLA for virtual host devices (``use_host_devices``) because XLA:CPU barely uses a second core
within one device (DESIGN.md: 1.8x for a CNN, 2.9x for ResNets with two).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cil.errors import ConfigError


def usable_cores() -> int:
    """The cores this process may run on (``taskset``, cgroups' cpusets), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def use_host_devices(count: int | None = None) -> None:
    """Asks XLA:CPU for ``count`` devices (default: the usable cores). Call before JAX initialises.

    Harmless on GPU and TPU, where the host platform is not the default backend. The environment
    variable CIL_HOST_DEVICES overrides the count (1 turns it off).
    """
    count = int(os.environ.get("CIL_HOST_DEVICES", count or usable_cores()))
    flags = os.environ.get("XLA_FLAGS", "")
    if count > 1 and "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={count}"
        # Virtual devices are threads: on a machine busy with other work one can lag the other
        # past XLA:CPU's default 40 s collective timeout, which aborts the process. Wait longer.
        if "collective_call_terminate_timeout" not in flags:
            flags += " --xla_cpu_collective_call_terminate_timeout_seconds=1200"
        os.environ["XLA_FLAGS"] = flags.strip()


def use_compilation_cache(directory: str | None = None) -> None:
    """Keeps compiled programs on disk, so that running a config again does not compile again.

    The folder: ``directory``, else CIL_COMPILATION_CACHE, else ~/.cache/cil/jax (an empty
    CIL_COMPILATION_CACHE turns the cache off). Every program is kept, however quick to compile:
    on a CPU the many small ones add up.
    """
    directory = directory or os.environ.get("CIL_COMPILATION_CACHE",
                                            os.path.expanduser("~/.cache/cil/jax"))
    if not directory:
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def initialize_distributed() -> bool:
    """Joins a run of several processes when the environment names one; True if it did.

    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``, or a SLURM step of several tasks (``SLURM_NTASKS`` > 1, which
    ``jax.distributed`` reads itself). Then ``jax.devices()`` holds every process's devices, so
    the ``data`` mesh axis spans them all; CPU devices talk through gloo. Call it before JAX
    computes anything.
    """
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    slurm_step = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ
    if not (explicit or slurm_step):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        try:
            count, index = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
        except (KeyError, ValueError):
            raise ConfigError("JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and "
                              "JAX_PROCESS_ID (0 ... count - 1) too") from None
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], count, index)
    else:
        jax.distributed.initialize()
    return True


def first_process() -> bool:
    """True in the one process that writes results and prints (every process computes them)."""
    return jax.process_index() == 0


def to_host(array) -> np.ndarray:
    """A device array as NumPy, gathered from every process when it is split across several."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def data_mesh() -> Mesh:
    return Mesh(jax.devices(), ("data",))


def replicate(mesh: Mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(mesh: Mesh, tree):
    """Constrains the leading (batch) axis of every leaf to be split over the mesh (inside jit)."""
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P("data")))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    if batch_size % mesh.size:
        raise ConfigError(f"{what}={batch_size} must be a multiple of the {mesh.size} devices "
                          f"it is split over; set it to {batch_size + mesh.size - batch_size % mesh.size}")


def fixed_size_batches(array, size: int):
    """Yields (batch, real) over ``array`` in batches of exactly ``size`` rows, the last one padded
    with zeros, and how many of its rows are real: fixed shapes, so a jitted consumer compiles once."""
    for start in range(0, len(array), size):
        batch = array[start:start + size]
        real = len(batch)
        if real < size:
            batch = np.concatenate([batch, np.zeros((size - real, *batch.shape[1:]), batch.dtype)])
        yield batch, real
