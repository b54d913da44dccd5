"""Multi-host start-up: join the processes of one run into one JAX system before any JAX work.

Three ways to start, in this order of precedence:

1. explicit flags (`imtcxr train --coordinator HOST:PORT --num-processes N --process-id I`): all three or none;
   used for local multi-process runs (launch/local_multiprocess.sh) and any cluster JAX cannot detect;
2. a cluster environment that `jax.distributed.initialize()` detects by itself: SLURM job steps started with
   `srun` (launch/slurm_v100.sbatch), Open MPI's `mpirun`, Cloud TPU VM pods (launch/tpu_pod.sh) and GKE TPU
   slices; `JAX_COORDINATOR_ADDRESS` / `JAX_COORDINATOR_PORT` / `JAX_LOCAL_DEVICE_IDS` are honoured there;
3. otherwise a plain single process: nothing to do.

JAX reads the environment itself; the checks below only decide *whether* to call it (calling it in a plain
process is an error) and name what was found, so that the log says how the run was put together.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np

log = logging.getLogger(__name__)

# jax/_src/clusters/slurm_cluster.py needs all of these; SLURM_STEP_NODELIST exists only inside `srun`.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
# GKE TPU slices and multislice jobs announce their hosts in these; GCE TPU VMs use the metadata server.
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")


def detect_environment() -> str | None:
    """A description of the cluster environment `jax.distributed.initialize()` will read, or None."""
    env = os.environ
    if all(name in env for name in _SLURM_VARS):
        if int(env["SLURM_NTASKS"]) <= 1:  # `srun -n 1` or an interactive step: nothing to join
            return None
        return (
            f"SLURM job {env['SLURM_JOB_ID']}: task {env['SLURM_PROCID']} of {env['SLURM_NTASKS']} "
            f"(local {env['SLURM_LOCALID']}) on {env.get('SLURMD_NODENAME', '?')}"
        )
    if "OMPI_MCA_orte_hnp_uri" in env:
        return (
            f"Open MPI: rank {env.get('OMPI_COMM_WORLD_RANK', '?')} of {env.get('OMPI_COMM_WORLD_SIZE', '?')}"
        )
    if any(name in env for name in _TPU_VARS):
        return f"TPU slice: worker {env.get('TPU_WORKER_ID', '?')}"
    if _on_cloud_tpu_vm():
        return "Cloud TPU VM (workers from the metadata server)"
    if "JAX_COORDINATOR_ADDRESS" in env:
        return f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']}"
    return None


def _on_cloud_tpu_vm() -> bool:
    # Set by `import jax` when libtpu finds TPU chips; private, hence the guarded lookup (a newer JAX that
    # moves it makes us miss GCE TPU pods, which the explicit flags or JAX_COORDINATOR_ADDRESS then cover).
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Join this process to its run (see the module docstring) and log the layout. Call once, first.

    `local_device_ids` restricts the accelerators this process drives (GPU: one process per GPU is what SLURM
    detection sets up by default; pass all of a node's ids for one process per node)."""
    explicit = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    given = [flag for flag, value in explicit.items() if value is not None]
    if given and len(given) < len(explicit):
        missing = [flag for flag in explicit if flag not in given]
        raise ValueError(
            f"multi-host: got {', '.join(given)} but not {', '.join(missing)}; give all three "
            "(--coordinator HOST:PORT of process 0, --num-processes N, --process-id 0..N-1) or none "
            "(SLURM srun and Cloud TPU pods are detected from the environment)"
        )
    if given:
        _check_explicit(coordinator, num_processes, process_id)
        how = f"explicit flags, coordinator {coordinator}"
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
    elif (how := detect_environment()) is not None:
        try:
            jax.distributed.initialize(local_device_ids=local_device_ids)
        except (ValueError, RuntimeError) as error:
            raise RuntimeError(
                f"multi-host: found {how}, but jax.distributed.initialize failed ({error}); "
                "pass --coordinator/--num-processes/--process-id explicitly"
            ) from error
    else:
        how = "single process"
        if local_device_ids is not None:
            raise ValueError(
                "multi-host: local_device_ids given for a single process; use CUDA_VISIBLE_DEVICES"
            )
    local, devices = jax.local_devices(), jax.devices()
    log.info(
        "%s: process %d of %d; %d local of %d global devices (%s)",
        how, jax.process_index(), jax.process_count(), len(local), len(devices), devices[0].device_kind,
    )  # fmt: skip


def _check_explicit(coordinator: str, num_processes: int, process_id: int) -> None:
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"multi-host: --coordinator: got {coordinator!r}, expected HOST:PORT (e.g. 10.0.0.1:1234)"
        )
    if num_processes < 1:
        raise ValueError(f"multi-host: --num-processes: got {num_processes}, expected at least 1")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"multi-host: --process-id: got {process_id}, expected 0..{num_processes - 1}")


def is_primary() -> bool:
    """Process 0: the one that writes shared files (logs, the workdir's set-up); checkpoints are collective."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across all processes (a no-op in a single process). Every process must call it with `name`."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a collective: every process must call it). Used so that
    a SIGTERM seen by some processes only stops all of them at the same step, where they save together."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


@contextlib.contextmanager
def primary_first(name: str) -> Iterator[None]:
    """Run the body on process 0 first, then on the others.

    For one-time work on the shared workdir (generating data, training and saving the tokenizer): process 0
    does it while the others wait; they then run the same body, which finds the files and only reads them."""
    if not is_primary():
        sync(name)
    yield
    if is_primary():
        sync(name)
