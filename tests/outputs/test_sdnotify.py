import os
import socket
import uuid

import pytest

from flopwatch.outputs import sdnotify


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's; yields ($NOTIFY_SOCKET environment, receive)."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield {"NOTIFY_SOCKET": path}, lambda: sock.recv(4096).decode()


def test_ready_then_watchdog_arrive_in_order(notify_socket):
    env, receive = notify_socket
    assert sdnotify.ready(env) and sdnotify.watchdog(env)
    assert [receive(), receive()] == ["READY=1", "WATCHDOG=1"]


def test_status_is_one_line(notify_socket):
    env, receive = notify_socket
    sdnotify.status("2 GPUs\n  gpu0 input_starved", env)
    assert receive() == "STATUS=2 GPUs gpu0 input_starved"


def test_reloading_carries_the_monotonic_time(notify_socket):
    env, receive = notify_socket
    sdnotify.reloading(env)
    first, second = receive().split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")


def test_abstract_socket_names_start_with_at():
    name = f"flopwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sdnotify.stopping({"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"STOPPING=1"


def test_without_notify_socket_nothing_is_sent():
    assert sdnotify.ready({}) is False


def test_a_vanished_socket_is_reported_not_raised(tmp_path):
    assert sdnotify.watchdog({"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_from_systemd_environment():
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(env) == 30.0


def test_watchdog_meant_for_another_process_is_ignored():
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_no_watchdog_configured():
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
