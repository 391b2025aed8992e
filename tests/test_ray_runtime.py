"""pipelines/ray_runtime: what every Ray worker of a stage gets from the job (quiet logs, MLflow credentials)."""

from __future__ import annotations

import logging

from pipelines.ray_runtime import ALLOCATOR_ENV, FORWARDED_ENV, NOISY_LOGGERS, job_runtime_env, quiet_worker_logs


def test_mlflow_credentials_travel_to_a_cluster_only_in_the_job_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-pass")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    assert job_runtime_env(True)["env_vars"] == ALLOCATOR_ENV | {"MLFLOW_TRACKING_USERNAME": "pipeline",
                                                                 "MLFLOW_TRACKING_PASSWORD": "s3cret-pass"}
    assert job_runtime_env(False)["env_vars"] == ALLOCATOR_ENV  # local workers inherit the driver's environment
    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    assert job_runtime_env(True)["env_vars"] == ALLOCATOR_ENV  # nothing set: nothing to forward


def test_every_worker_process_starts_with_the_allocators_settings(ray_local):
    """glibc reads its settings from the environment the process was started with (os.environ set later is not
    read): each worker's own start-time environment must hold them. Their effect on a step is measured by
    benchmarks/pass_cost.py (RESULTS.md), not here."""

    @ray_local.remote(num_cpus=0)
    def start_environment() -> dict[str, str]:
        with open("/proc/self/environ", "rb") as fh:
            pairs = [item.decode().split("=", 1) for item in fh.read().split(b"\0") if b"=" in item]
        return {k: v for k, v in pairs if k in ALLOCATOR_ENV}

    assert ray_local.get(start_environment.remote()) == ALLOCATOR_ENV


def test_a_value_the_user_set_for_the_allocator_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert job_runtime_env(False)["env_vars"]["MALLOC_MMAP_MAX_"] == "65536"


def test_the_setup_hook_quiets_ray_trains_state_api_warnings_in_every_worker(ray_local):
    assert job_runtime_env(False)["worker_process_setup_hook"] is quiet_worker_logs

    @ray_local.remote(num_cpus=0)
    def levels() -> dict[str, int]:
        return {name: logging.getLogger(name).level for name in NOISY_LOGGERS}

    assert ray_local.get(levels.remote()) == {name: logging.ERROR for name in NOISY_LOGGERS}


def test_ray_trains_own_deprecation_warnings_stay_off_the_users_terminal(ray_local):
    """Ray Train's DatasetManager sets ExecutionOptions.exclude_resources once a pass; Ray then warns of its own use."""

    @ray_local.remote(num_cpus=0)
    def warned() -> list[str]:
        import warnings

        from ray.data._internal.execution.interfaces.execution_options import ExecutionOptions, ExecutionResources

        with warnings.catch_warnings(record=True) as seen:
            ExecutionOptions(exclude_resources=ExecutionResources.zero())
            warnings.warn("any other warning is still shown", UserWarning, stacklevel=1)
        return [str(w.message) for w in seen]

    said = ray_local.get(warned.remote())
    assert said == ["any other warning is still shown"], said


def test_the_drivers_token_auth_notice_stays_off_the_users_terminal():
    """Ray logs, at every local ray.init (once a stage), that token authentication is on: its secure default, which
    the pipeline keeps; the notice is quieted, Ray's other warnings are not."""
    from ray._private.authentication import authentication_token_setup as setup

    from pipelines.ray_runtime import quiet_driver_logs

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    other, keep = logging.getLogger("ray.data"), Keep()
    for logger in (setup.logger, other):
        logger.addHandler(keep)
    try:
        quiet_driver_logs()
        setup._warn_token_auth_enabled()
        other.warning("any other Ray warning is still shown")
    finally:
        for logger in (setup.logger, other):
            logger.removeHandler(keep)
    assert seen == ["any other Ray warning is still shown"]
