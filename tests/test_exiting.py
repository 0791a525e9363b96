"""runtime.exiting: a process that ran torch.distributed ends with its code, output flushed, and
without interpreter finalization (atexit handlers are part of it and must not run)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, sys
from medusa_trt.runtime import exiting
atexit.register(lambda: sys.stderr.write("finalized"))
print(exiting.skip_finalization(), end=" ")
exiting.forbid_finalization("test")
print(exiting.skip_finalization(), end=" ")
sys.stderr.write("no newline")
exiting.end_process(7)
"""


def test_end_process_flushes_and_skips_finalization() -> None:
    # stdout is a pipe here (block-buffered): what was printed arrives only if end_process flushed it
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stderr
    assert done.stdout == "False True "
    assert done.stderr == "no newline"  # and not "finalized": atexit never ran
