"""Helpers for tests that use real sandboxes: the docker test image and a /proc process scan.

Not used by the sandboxes themselves. ``docker_unavailable_reason`` starts the engine and builds the
test image with the repository's scripts when it can (as root, with ``dockerd`` installed), so docker
tests run wherever an engine can run, and skip, with the reason, only where none can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from amrsd_envs.sandbox.docker_backend import TEST_IMAGE, host_system_binds

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"


def _engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_unavailable_reason() -> str | None:
    """None when docker sandboxes can run here (engine up, test image built), else why not.

    Starts ``dockerd`` (scripts/start_dockerd.sh) and builds ``TEST_IMAGE`` (scripts/make_test_image.sh)
    when they are missing and this process may do so.
    """
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker SDK is not installed (pip install docker)"
    if not _engine_answers():
        if shutil.which("dockerd") is None:
            return "no Docker engine answers and dockerd is not installed"
        if os.geteuid() != 0:
            return "no Docker engine answers and starting dockerd needs root"
        started = subprocess.run(
            ["bash", str(SCRIPTS_DIR / "start_dockerd.sh")], capture_output=True, text=True, timeout=180
        )
        if started.returncode != 0 or not _engine_answers():
            return f"dockerd could not be started: {started.stderr.strip()[-500:]}"
    built = subprocess.run(
        ["bash", str(SCRIPTS_DIR / "make_test_image.sh")], capture_output=True, text=True, timeout=600
    )
    if built.returncode != 0:
        return f"the docker test image could not be built: {built.stderr.strip()[-500:]}"
    return None


def docker_test_options() -> dict:
    """``make_sandbox("docker", **options)`` options that run ``TEST_IMAGE`` with the host's Python."""
    return {"image": TEST_IMAGE, "binds": host_system_binds()}


def processes_with_marker(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (a psutil-free /proc scan; skips zombies)."""
    needle = marker.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
        if needle in cmdline and state != b"Z":
            found.append(int(name))
    return found


def processes_named(comm: str) -> list[int]:
    """Host pids whose name (``/proc/PID/comm``, at most 15 bytes, inherited by forks) is ``comm``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as handle:
                if handle.read().strip() != comm:
                    continue
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z":
            found.append(int(name))
    return found
