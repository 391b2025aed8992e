"""Starting or joining Ray: a local instance by default, the cluster RAY_ADDRESS names otherwise."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(dashboard: bool = False) -> None:
    """Idempotent ray.init(); the dashboard stays off unless asked for (it costs memory and a port)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": dashboard, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    # the same inputs give the same rows in the same order (and `limit` the same rows): without it the
    # actor pool's finishing order decides, and two runs of a stage train on different samples
    ctx.execution_options.preserve_order = True
    log.info("Ray %s: %s", "cluster" if address else "local", ray.cluster_resources())
