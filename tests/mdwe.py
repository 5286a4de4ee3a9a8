"""Run a Python command line with writable+executable memory refused, as the unit's
MemoryDenyWriteExecute=yes does: ``python tests/mdwe.py -m flopwatch ...``.

Uses the kernel's own switch (prctl PR_SET_MDWE, Linux 6.3+), which survives execve; exits 77
where the kernel lacks it.
"""

import ctypes
import os
import sys

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
UNSUPPORTED = 77

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print(f"prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    sys.exit(UNSUPPORTED)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
