"""stages/common.py: the `stage` decorator runs a command's body under its stage name and turns a known
failure into one line and exit code 1; the shared options keep their names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stages.common import ParamsFile, stage


def test_stage_names_the_failing_stage_with_its_options_and_exits_1():
    app = typer.Typer(add_completion=False)

    @app.command()
    @stage("evaluate@{task}")
    def main(task: str = typer.Option(...), params: ParamsFile = Path("params.yaml")) -> None:
        if task == "bad":
            raise ValueError(f"{params}: no such section")
        print(f"ran {task} with {params}")

    runner = CliRunner()
    ok = runner.invoke(app, ["--task", "attributes", "--params", "p.yaml"])
    assert ok.exit_code == 0 and "ran attributes with p.yaml" in ok.output
    failed = runner.invoke(app, ["--task", "bad"])
    assert failed.exit_code == 1
    assert "[evaluate@bad] FAILED: params.yaml: no such section" in failed.output + (failed.stderr or "")


# a stage body in a fresh process: the exit hook registered first runs last and reports whether Ray slept its 0.5 s
# "for late error messages" (ray._private.worker.shutdown at exit), whether Ray is still up, and whether Ray's own
# shutdown found the autoscaler monitor still running (it then sends SIGTERM and waits up to a second for it)
_EXIT_PROBE = '''
import atexit, sys, time
slept, real_sleep, alive_at_kill = [], time.sleep, {}
time.sleep = lambda s: (slept.append(s), real_sleep(s))[1]
atexit.register(lambda: print("EXIT", 0.5 in slept, __import__("ray").is_initialized(), alive_at_kill.get("monitor"),
                              flush=True))
from ray._private import node as N  # after the hook above: Ray's own exit hook, registered at import, runs first
real_kill = N.Node._kill_process_impl
def kill(self, kind, *a, **k):
    alive_at_kill[kind] = any(i.process.poll() is None for i in self.all_processes.get(kind, []))
    return real_kill(self, kind, *a, **k)
N.Node._kill_process_impl = kill
from pipelines.ray_runtime import init_ray
from stages.common import run_stage
def body():
    init_ray()
    if sys.argv[1] == "fail":
        raise RuntimeError("the stage failed")
run_stage("probe", body)
'''


@pytest.mark.parametrize("outcome", ["finish", "fail"])
def test_a_finished_stage_stops_ray_without_waiting_for_late_errors_and_a_failed_one_waits(outcome, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local instance of its own
    done = subprocess.run([sys.executable, "-c", _EXIT_PROBE, outcome], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == (0 if outcome == "finish" else 1), done.stderr[-2000:]
    waited = outcome == "fail"  # a failed stage keeps Ray's wait, so its workers' last lines still print
    # a finished stage kills the local autoscaler monitor before Ray's shutdown reaches it (no second's grace)
    assert f"EXIT {waited} False {waited}" in done.stdout, done.stdout[-2000:]


# a stage's entry point in a fresh process. Its exit hook and its last, unflushed output must survive the exit; an
# object only Python's own teardown of the module would finalise tells whether that teardown ran
_RUN_CLI_PROBE = '''
import atexit, sys, threading, time
import typer
from stages.common import run_cli
app = typer.Typer(add_completion=False)
@app.command()
def main(outcome: str, log: str) -> None:
    atexit.register(lambda: open(log, "a").write("hook ran\\n"))
    print("the last line, unflushed", end="")
    if outcome == "working thread":
        threading.Thread(target=lambda: (time.sleep(0.5), open(log, "a").write("thread done\\n"))).start()
    elif outcome == "failed":
        raise typer.Exit(3)
    elif outcome == "message":
        sys.exit("stopped: a reason")
class Teardown:  # holds what its __del__ needs: late in the teardown, globals and builtins are gone
    def __init__(self, path):
        import os
        self.fd, self.write = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), os.write
    def __del__(self):
        self.write(self.fd, b"teardown ran\\n")
kept = Teardown(sys.argv[-1])
run_cli(app)
'''


@pytest.mark.parametrize(("outcome", "code", "teardown"), [("finished", 0, False), ("failed", 3, False),
                                                          ("working thread", 0, True), ("message", 1, True)])
def test_a_stage_process_exits_with_its_code_hooks_and_output_but_without_pythons_teardown(outcome, code, teardown,
                                                                                            tmp_path):
    """run_cli: the command's exit code, every exit hook run and stdout flushed, and the interpreter's teardown of
    the modules skipped; where a thread still works, or the exit carries a message, Python's own exit instead."""
    log = tmp_path / "log"
    done = subprocess.run([sys.executable, "-c", _RUN_CLI_PROBE, outcome, str(log)], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout == "the last line, unflushed"
    lines = log.read_text().splitlines()
    assert "hook ran" in lines
    assert ("teardown ran" in lines) is teardown, lines
    assert ("thread done" in lines) is (outcome == "working thread")
    assert ("stopped: a reason" in done.stderr) is (outcome == "message")
