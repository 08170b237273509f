"""Runs the sfzb-host binary installed with this wheel.

`main()` is the wheel's entry point (group `sfzb_host`, name `main`) for a Databricks
python_wheel_task: the task's parameters are sfzb-host's arguments. It runs the binary as a
child process (the task's Python process must stay to report the result), forwards SIGTERM
and SIGINT to it so a cancelled run still flushes and commits its checkpoints, and raises if
the binary fails, which fails the task.
"""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from importlib import metadata

BINARY = "sfzb-host"


def binary_path():
    """Where pip put the binary: the RECORD of this distribution, else the usual script dirs."""
    try:
        for file in metadata.distribution("sfzb-host").files or []:
            if file.name == BINARY:
                path = file.locate()
                if os.access(path, os.X_OK):
                    return str(path)
    except metadata.PackageNotFoundError:
        pass
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(directory, BINARY)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(BINARY)
    if found is None:
        raise FileNotFoundError(f"{BINARY} is not installed next to the sfzb-host wheel")
    return found


def run(args):
    """Runs sfzb-host with `args`; returns its exit code."""
    child = subprocess.Popen([binary_path(), *args])

    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(args=None):
    """Runs sfzb-host with `args` (default: this process's arguments); raises if it fails."""
    code = run(sys.argv[1:] if args is None else args)
    if code != 0:
        raise SystemExit(f"{BINARY} exited with code {code}")
