import os
import sys

from . import workloads

name = sys.argv[1]
print(f"workload {name} pid {os.getpid()}", flush=True)
workloads()[name]()
