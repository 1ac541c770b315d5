"""Run a command and report its own peak RSS (``PEAK_RSS_KIB n`` on stdout after the command's output).

A process forked from a large one starts with that process's RSS as its high-water mark, and exec keeps it in
``ru_maxrss``: a benchmark parent that has just written a 20,000^2 raster would lend the child its own 2 GB.
Forked from this small process instead, the command's ``ru_maxrss`` is its own."""
import ctypes
import os
import subprocess
import sys


def _die_with_parent():
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: a timeout's kill of this launcher ends the command


proc = subprocess.Popen(sys.argv[1:], preexec_fn=_die_with_parent)
_, status, usage = os.wait4(proc.pid, 0)
print(f"PEAK_RSS_KIB {usage.ru_maxrss}", flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
