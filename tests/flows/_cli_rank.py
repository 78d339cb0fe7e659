"""One torchrun rank of ``python -m odeflow ARGS`` that also reports, after the command
returns, whether it left native threads behind (gloo's, when its process group outlives
``destroy_process_group``). Prints ``threads BEFORE AFTER`` (-1 without /proc)."""

import os
import runpy
import sys

import torch  # noqa: F401  (torch's own start-up threads count as "before")


def _threads() -> int:
    task = "/proc/self/task"
    return len(os.listdir(task)) if os.path.isdir(task) else -1


if __name__ == "__main__":
    before = _threads()
    sys.argv = ["odeflow", *sys.argv[1:]]
    try:
        runpy.run_module("odeflow", run_name="__main__", alter_sys=True)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    print(f"threads {before} {_threads()}", flush=True)
    sys.exit(rc)
