"""Reading /proc through kept descriptors."""

import os
import subprocess
import sys

from flopwatch.sources.procfs import (CLOCK_TICKS, Pressure, ProcFiles, SchedStat, blkio_seconds, host_cpu_ticks, io_bytes,
                                     load_average, pressure, schedstat, stat_fields)


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


def test_schedstat_reads_time_on_a_cpu_time_waiting_for_one_and_timeslices():
    assert schedstat(b"2500000000 1500000000 812\n") == SchedStat(2.5, 1.5, 812)
    assert schedstat(None) is None and schedstat(b"") is None


def test_the_schedstat_of_a_real_thread_counts_its_cpu_time():
    me = os.getpid()
    before = schedstat(ProcFiles().read(f"/proc/{me}/task/{me}/schedstat"))
    sum(i * i for i in range(2_000_000))
    after = schedstat(ProcFiles().read(f"/proc/{me}/task/{me}/schedstat"))
    assert after.run_seconds > before.run_seconds and after.timeslices >= before.timeslices


def test_pressure_takes_the_exact_totals_not_the_decaying_averages():
    cpu = b"some avg10=16.75 avg60=18.99 avg300=9.29 total=42380830\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    assert pressure(cpu) == Pressure(42.38083, 0.0)


def test_pressure_without_a_full_line_and_without_psi():
    assert pressure(b"some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n") == Pressure(1.0, None)
    assert pressure(None) is None


def test_the_load_average_is_the_one_minute_figure():
    assert load_average(b"31.96 24.10 12.02 33/1200 4242\n") == 31.96


def test_block_io_delay_is_the_stat_s_field_42_in_seconds():
    fields = stat_fields(b"42 (python) D 1" + b" 0" * 37 + b" 250 0 0\n", 40)
    assert blkio_seconds(fields) == 250 / CLOCK_TICKS
    assert blkio_seconds(stat_fields(b"42 (python) S 1 0 0")) is None
