"""Loader workers and signals: a job-wide SIGTERM is the main process's to handle, but a worker still stops
when its own parent stops it, so a process never hangs at exit on a live loader."""

import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = """
import multiprocessing, sys, torch
from sslkit.data.loader import make_loader

torch.multiprocessing.set_start_method(sys.argv[1], force=True)

loader = make_loader(list(range(16)), 2, 1, torch.device("cpu"))
batches = iter(loader)
first = next(batches)
print(multiprocessing.active_children()[0].pid, flush=True)
sys.stdin.readline()  # the test signals the worker meanwhile
print(sum(int(b.sum()) for b in [first, *batches]), flush=True)
# the loader and its persistent worker stay alive: exiting must stop the worker, not wait for it
"""


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])  # Python 3.14 starts workers by forkserver
def test_worker_ignores_a_job_wide_sigterm_yet_the_process_exits_with_a_live_loader(start_method):
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, start_method], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        worker = int(process.stdout.readline())
        os.kill(worker, signal.SIGTERM)  # as scancel or `kill -TERM -PGID` would: not from the worker's parent
        time.sleep(0.5)
        os.kill(worker, 0)  # still alive (raises ProcessLookupError otherwise)
        out, _ = process.communicate("go\n", timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0
    assert int(out) == sum(range(16))  # the worker went on serving batches after the SIGTERM
