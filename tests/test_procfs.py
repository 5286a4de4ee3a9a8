"""Reading /proc through kept descriptors."""

import os
import subprocess
import sys

from flopwatch.sources.procfs import ProcFiles, host_cpu_ticks, io_bytes, stat_fields


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_kept_file_is_read_afresh_each_time():
    files = ProcFiles()
    path = f"/proc/{os.getpid()}/stat"
    before = int(stat_fields(files.read(path))[11])
    sum(i * i for i in range(2_000_000))  # burn some user CPU
    assert int(stat_fields(files.read(path))[11]) > before


def test_the_file_of_a_process_that_is_gone_reads_none_and_is_closed():
    files = ProcFiles()
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    path = f"/proc/{process.pid}/stat"
    assert files.read(path) is not None
    process.wait()
    fds = open_fds()
    assert files.read(path) is None
    assert open_fds() == fds - 1


def test_a_sweep_closes_the_files_not_read_since_the_last_one():
    files = ProcFiles()
    me, parent = f"/proc/{os.getpid()}/stat", f"/proc/{os.getppid()}/stat"
    files.read(me)
    files.read(parent)
    files.sweep()
    fds = open_fds()
    files.read(me)
    files.sweep()
    assert open_fds() == fds - 1


def test_past_its_limit_files_are_still_read_but_not_kept():
    files = ProcFiles(limit=1)
    files.read(f"/proc/{os.getpid()}/stat")
    fds = open_fds()
    assert files.read(f"/proc/{os.getpid()}/statm") is not None
    assert open_fds() == fds


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    assert stat_fields(b"42 (a) b (c)) S 1 42")[:2] == [b"S", b"1"]


def test_io_bytes_reads_what_was_read_and_written_from_storage():
    assert io_bytes(b"rchar: 10\nread_bytes: 4096\nwrite_bytes: 512\n") == (4096, 512)
    assert io_bytes(None) == (None, None)


def test_host_cpu_time_leaves_out_guest_time_which_user_time_already_holds():
    ticks = host_cpu_ticks(b"cpu  100 0 50 800 40 0 10 0 30 0\ncpu0 1 2 3\n")
    assert ticks == (1000, 800, 40)
