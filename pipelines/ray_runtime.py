"""Starting or joining Ray: a local instance by default, the cluster RAY_ADDRESS names otherwise, or the instance
the whole run shares (pipelines/ray_session.py: `make run`)."""

from __future__ import annotations

import atexit
import logging
import os
import sys

from pipelines.ray_session import session_address

log = logging.getLogger(__name__)

# What a worker on another node needs to reach MLflow as the pipeline's user. It travels in the job's runtime
# environment only: never in a train config, an MLflow param, tag or artifact. Local workers inherit the driver's.
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# glibc's malloc in every Ray worker: no mmap for large blocks and no trimming of the heap. By default a block over
# the (at most 32 MB) mmap threshold is mapped at each allocation and unmapped at its free, so a training step's
# activations (the LM's fp32 attention scores: 32 x 4 x 271 x 271 floats, 38 MB) are page-faulted in anew at every
# step: 86,500 minor faults a whole-loss step in a plain process, 0 with these; in the stage 0.60-0.66 -> 0.46-0.49 s
# a step, the weights bit for bit the same (benchmarks/RESULTS.md). A value already in the driver's environment is kept.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
# Ray Train's placement-group cleaner asks the State API, which needs the dashboard (off here), every few seconds,
# and warns each time it cannot: hundreds of lines per training pass on the user's terminal, none actionable
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
# Ray's own deprecations that Ray's own code triggers (Ray Train's DatasetManager sets exclude_resources once a
# pass): nothing a user of the pipeline can act on
RAY_INTERNAL_DEPRECATIONS = (r"`ExecutionOptions\.exclude_resources` is deprecated",)
# the driver's notice, at every local ray.init (once a stage), that a local instance uses token authentication:
# Ray's secure default, which the pipeline keeps; nothing to act on
DRIVER_NOISY_LOGGERS = ("ray._private.authentication.authentication_token_setup",)


def quiet_worker_logs() -> None:
    """Runs in every Ray worker process at start (runtime_env worker_process_setup_hook)."""
    import warnings

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in RAY_INTERNAL_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)


def quiet_driver_logs() -> None:
    for name in DRIVER_NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def job_runtime_env(joining_a_cluster: bool) -> dict:
    """Every worker of the job: the setup hook, the allocator's settings and, on a cluster, MLflow's credentials."""
    env_vars = {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}
    if joining_a_cluster:
        env_vars |= {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    return {"worker_process_setup_hook": quiet_worker_logs, "env_vars": env_vars}


def init_ray(dashboard: bool = False) -> None:
    """Idempotent ray.init(); the dashboard stays off unless asked for (it costs memory and a port)."""
    import ray

    if ray.is_initialized():
        return
    quiet_driver_logs()
    address = os.environ.get("RAY_ADDRESS") or session_address()
    kwargs = {"include_dashboard": dashboard, "log_to_driver": True, "runtime_env": job_runtime_env(bool(address))}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    # the same inputs give the same rows in the same order (and `limit` the same rows): without it the
    # actor pool's finishing order decides, and two runs of a stage train on different samples
    ctx.execution_options.preserve_order = True
    log.info("Ray %s: %s", f"at {address}" if address else "local", ray.cluster_resources())


_STOP_REGISTERED = False


def stop_without_waiting_at_exit() -> None:
    """At this process's exit, stop Ray before Ray's own exit hook does: that hook first sleeps 0.5 s so a failing
    job's late error messages still print; a stage that finished has none to wait for. Idempotent."""
    global _STOP_REGISTERED
    if not _STOP_REGISTERED:
        atexit.register(_stop_ray)  # exit hooks run last-registered first: before Ray's, which then has nothing to do
        _STOP_REGISTERED = True


def _stop_ray() -> None:
    ray = sys.modules.get("ray")  # a process that never imported Ray has none to stop
    if ray is not None and ray.is_initialized():
        _kill_autoscaler_monitor()
        ray.shutdown()


def _kill_autoscaler_monitor() -> None:
    """The local instance's autoscaler monitor (it has no cluster to scale) answers ray.shutdown()'s SIGTERM by
    reporting its own end to the GCS, which Ray has stopped just before: it then sits out Ray's one-second grace at
    every stage's exit. It holds nothing to save, so it is killed first. Ray's internals: where they moved, the plain
    shutdown still runs."""
    try:
        from ray._private import ray_constants, worker

        node = worker._global_node  # None when this process joined a cluster as a client
        for info in (node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node is not None else []):
            info.process.kill()
            info.process.wait(timeout=1)
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        log.debug("autoscaler monitor not stopped ahead of Ray: %s", exc)
