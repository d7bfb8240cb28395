"""Hostile code in every backend: each test asserts that nothing escapes and the host stays fine.

Backends: ``local`` at its strongest level (bubblewrap here) and ``docker`` (test image). The network
tests only ever address loopback listeners the test itself opens; the one outside address
(1.1.1.1:53) is tried only after the sandboxed code has checked that its routing table is empty, so no
packet can leave even if the isolation were broken (it would report the route instead).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from amrsd_envs.sandbox import IsolationLevel, Sandbox, make_sandbox
from amrsd_envs.sandbox.testing import (
    processes_named,
    processes_with_marker,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
from _sandbox_fixtures import BACKEND_PARAMS, docker_ready, new_sandbox  # noqa: F401,E402


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def sandbox(request: pytest.FixtureRequest):
    sb = new_sandbox(request.param, request)
    if request.param == "local" and sb.isolation < IsolationLevel.BWRAP:
        sb.close()
        pytest.skip(f"local isolation here is {sb.isolation.name}; these guarantees need BWRAP (apt-get install bubblewrap)")
    yield sb
    sb.close()


def wait_until_gone(marker: str, timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = processes_with_marker(marker)
        if not left:
            return []
        time.sleep(0.05)
    return processes_with_marker(marker)


def assert_host_responsive() -> None:
    started = time.monotonic()
    done = subprocess.run(["true"], timeout=10)
    assert done.returncode == 0 and time.monotonic() - started < 10


# ------------------------------------------------------------------------------------------ network
def test_no_network_to_a_host_loopback_listener(sandbox: Sandbox) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(('127.0.0.1', {port}))\n"
        "    s.sendall(b'escaped')\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    try:
        result = sandbox.run(code, timeout_s=10)
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever reached the host's listener
    finally:
        server.close()
    assert "CONNECTED" not in result.stdout
    assert result.stdout.startswith("refused"), result.stderr


def test_no_abstract_unix_socket_to_the_host(sandbox: Sandbox) -> None:
    name = f"\0amrsd-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(1)
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "try:\n"
        f"    s.connect({name!r})\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    try:
        result = sandbox.run(code)
    finally:
        server.close()
    assert result.stdout.startswith("refused"), result.stdout + result.stderr


def test_no_route_out_and_outside_address_unreachable(sandbox: Sandbox) -> None:
    code = (
        "import os, socket\n"
        "routes = open('/proc/net/route').read().splitlines()[1:]\n"
        "routes6 = [l for l in open('/proc/net/ipv6_route').read().splitlines() if not l.endswith('lo')] "
        "if os.path.exists('/proc/net/ipv6_route') else []\n"
        "nics = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
        "print('nics', sorted(nics))\n"
        "if routes or routes6:\n"
        "    print('ROUTE', routes, routes6)\n"  # refuse to send anything if a route exists
        "    raise SystemExit(2)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(2)\n"
        "try:\n"
        "    s.connect(('1.1.1.1', 53))\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('unreachable', exc.errno)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "    print('RESOLVED')\n"
        "except OSError:\n"
        "    print('no dns')\n"
    )
    result = sandbox.run(code, timeout_s=15)
    lines = result.stdout.splitlines()
    assert lines[0] == "nics ['lo']", result.stdout + result.stderr
    assert "ROUTE" not in result.stdout
    assert lines[1:] == ["unreachable 101", "no dns"]  # 101 = ENETUNREACH: refused before any packet


# ------------------------------------------------------------------------------------------ files
@pytest.fixture()
def host_secrets():
    """Secret files in a temp dir beside the checkout, in /root (when writable) and in the host /tmp."""
    token = f"SECRET-{uuid.uuid4().hex}"
    made: list[Path] = []
    dirs = [Path(tempfile.mkdtemp(prefix="amrsd-secret-", dir=REPO_ROOT.parent)), Path(tempfile.mkdtemp(prefix="amrsd-secret-"))]
    if os.access("/root", os.W_OK):
        dirs.append(Path("/root"))
    for directory in dirs:
        path = directory / f"amrsd-secret-{uuid.uuid4().hex[:8]}.txt"
        path.write_text(token)
        path.chmod(0o644)  # world-readable on the host: only the sandbox's view may hide it
        made.append(path)
    yield token, made
    for path in made:
        path.unlink(missing_ok=True)
        if path.parent != Path("/root"):
            path.parent.rmdir()


def test_host_files_are_not_readable(sandbox: Sandbox, host_secrets) -> None:
    token, paths = host_secrets
    code = (
        "import os\n"
        f"for path in {[str(p) for p in paths]!r}:\n"
        "    try:\n"
        "        print('READ', open(path).read())\n"
        "    except OSError as exc:\n"
        "        print('denied', type(exc).__name__)\n"
        f"print('checkout visible', os.path.exists({str(REPO_ROOT)!r}))\n"
        # the checkout's parent may be a folder the sandbox has of its own (a clone under /tmp): what must not show is
        # the host's listing of it, i.e. the checkout's own name
        f"print('checkout parent listed', os.path.isdir({str(REPO_ROOT.parent)!r}) and "
        f"{REPO_ROOT.name!r} in os.listdir({str(REPO_ROOT.parent)!r}))\n"
        "print('docker socket', os.path.exists('/var/run/docker.sock') or os.path.exists('/run/docker.sock'))\n"
        "try:\n"
        "    open('/etc/shadow').read()\n"
        "    print('SHADOW READ')\n"
        "except OSError:\n"
        "    print('shadow denied')\n"
    )
    result = sandbox.run(code)
    assert token not in result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        *(["denied FileNotFoundError"] * len(paths)),
        "checkout visible False",
        "checkout parent listed False",
        "docker socket False",
        "shadow denied",
    ], result.stdout + result.stderr


def test_no_write_outside_the_working_directory(sandbox: Sandbox) -> None:
    code = (
        "import os\n"
        "for path in ['/usr/amrsd_pwned', '/etc/amrsd_pwned', '/amrsd_pwned', '/bin/amrsd_pwned', '/var/amrsd_pwned']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('denied', path)\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print('inside ok')\n"
    )
    result = sandbox.run(code)
    assert "WROTE" not in result.stdout, result.stdout
    assert result.stdout.count("denied") == 5 and "inside ok" in result.stdout
    for path in ["/usr/amrsd_pwned", "/etc/amrsd_pwned", "/amrsd_pwned", "/bin/amrsd_pwned", "/var/amrsd_pwned"]:
        assert not os.path.exists(path)


def test_no_capabilities_and_not_host_root(sandbox: Sandbox) -> None:
    code = (
        "fields = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
        "print(fields['CapEff'].strip(), fields['CapPrm'].strip(), fields['NoNewPrivs'].strip())\n"
    )
    result = sandbox.run(code)
    assert result.stdout.split() == ["0000000000000000", "0000000000000000", "1"], result.stdout + result.stderr


def test_cannot_ptrace_or_read_the_sandbox_own_processes(sandbox: Sandbox) -> None:
    # Every other process visible from the call (the zygote and idle spares where it can see them)
    # must refuse ptrace and /proc/PID/mem: otherwise a call could tamper with a later one.
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "me = os.getpid()\n"
        "others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != me]\n"
        "breaches = []\n"
        "for pid in others:\n"
        "    if libc.ptrace(16, pid, None, None) == 0:\n"  # PTRACE_ATTACH
        "        breaches.append(('ptrace', pid))\n"
        "        libc.ptrace(17, pid, None, None)\n"  # PTRACE_DETACH
        "    try:\n"
        "        with open(f'/proc/{pid}/mem', 'rb') as handle:\n"
        "            breaches.append(('mem', pid))\n"
        "    except OSError:\n"
        "        pass\n"
        "print(len(others), breaches)\n"
    )
    result = sandbox.run(code)
    assert result.exit_code == 0, result.stderr
    count, breaches = result.stdout.split(" ", 1)
    assert breaches.strip() == "[]", result.stdout


def test_per_call_view_hides_the_sandbox_own_processes() -> None:
    with make_sandbox("local") as sb:
        if not getattr(sb, "per_call_namespaces", False):
            pytest.skip("per-call namespaces unavailable here")
        result = sb.run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.getpid())")
    assert result.stdout == "[1, 2] 2\n"  # the call's own init and itself: no zygote, no other call


# ------------------------------------------------------------------------------------------ resources
def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    name = f"bomb{uuid.uuid4().hex[:11]}"  # a process name (comm), inherited by every fork
    code = (
        "import os\n"
        f"open('/proc/self/comm', 'w').write({name!r})\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = sandbox.run(code, timeout_s=3)
    assert result.timed_out and result.exit_code != 0
    assert_host_responsive()
    deadline = time.monotonic() + 5
    while processes_named(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_named(name) == []  # every forked process is gone
    assert sandbox.run("print('after')").stdout == "after\n"


def test_memory_bomb_is_stopped(sandbox: Sandbox) -> None:
    at_once = sandbox.run("data = bytearray(4 * 1024 ** 3)\nprint('ALLOCATED')")
    assert at_once.exit_code != 0 and "ALLOCATED" not in at_once.stdout
    assert "MemoryError" in at_once.stderr
    growing = sandbox.run(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 * 1024))\n", timeout_s=20
    )
    assert growing.exit_code != 0 and not growing.timed_out
    assert_host_responsive()
    assert sandbox.run("print('after')").stdout == "after\n"


def test_infinite_loop_with_children_leaves_nothing(sandbox: Sandbox) -> None:
    marker = f"amrsd-marker-{uuid.uuid4().hex}"
    sleeper = f"[sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}]"
    code = (
        "import os, subprocess, sys\n"
        f"subprocess.Popen({sleeper})\n"
        "if os.fork() == 0:\n"  # a daemon: double fork + new session, detached from the caller
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, {sleeper})\n"
        "    os._exit(0)\n"
        "import time\n"
        "time.sleep(0.5)\n"
        "print('spawned', flush=True)\n"
        "while True:\n"
        "    pass\n"
    )
    result = sandbox.run(code, timeout_s=2)
    assert result.timed_out and result.exit_code != 0
    assert result.stdout == "spawned\n", result.stderr
    assert wait_until_gone(marker) == []


def test_background_children_die_when_the_program_exits(sandbox: Sandbox) -> None:
    marker = f"amrsd-marker-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        "print('bye')\n"
    )
    result = sandbox.run(code)
    assert result.stdout == "bye\n" and result.exit_code == 0 and not result.timed_out
    assert wait_until_gone(marker) == []


def test_huge_output_is_truncated(sandbox: Sandbox) -> None:
    code = (
        "import sys\n"
        "chunk = 'x' * (1 << 20)\n"
        "for _ in range(100):\n"
        "    sys.stdout.write(chunk)\n"
        "    sys.stderr.write(chunk)\n"
        "print('done', file=sys.stderr)\n"
    )
    result = sandbox.run(code, timeout_s=30)
    assert result.exit_code == 0 and not result.timed_out
    assert result.truncated
    assert len(result.stdout.encode()) == 65536 and len(result.stderr.encode()) == 65536


def test_huge_file_write_is_limited(sandbox: Sandbox) -> None:
    code = "with open('big.bin', 'wb') as f:\n    for _ in range(200):\n        f.write(b'0' * (1 << 20))\nprint('WROTE')\n"
    result = sandbox.run(code)
    assert "WROTE" not in result.stdout and result.exit_code != 0


# ------------------------------------------------------------------------------------------ environment
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_host_environment_is_not_visible(backend: str, request: pytest.FixtureRequest, monkeypatch) -> None:
    value = f"token-{uuid.uuid4().hex}"
    monkeypatch.setenv("AMRSD_TEST_SECRET", value)
    with new_sandbox(backend, request) as sb:
        code = (
            "import os\n"
            "print(sorted(os.environ))\n"
            "seen = []\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self']:\n"
            "    try:\n"
            "        seen.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError:\n"
            "        pass\n"
            "print(b''.join(seen).decode('latin-1'))\n"
        )
        result = sb.run(code)
    assert value not in result.stdout + result.stderr
    assert "AMRSD_TEST_SECRET" not in result.stdout
    assert result.stdout.splitlines()[0] == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


# ------------------------------------------------------------------------------------------ crashes
def test_crashes_come_back_as_results(sandbox: Sandbox) -> None:
    aborted = sandbox.run("import os\nos.abort()")
    assert aborted.exit_code == -6 and not aborted.timed_out
    segfault = sandbox.run("import ctypes\nctypes.string_at(0)")
    assert segfault.exit_code == -11
    recursion = sandbox.run("import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)")
    assert recursion.exit_code != 0
    assert sandbox.run("print('after')").stdout == "after\n"


def test_killing_everything_it_can_see_only_ends_the_call(sandbox: Sandbox) -> None:
    code = (
        "import os, signal, tempfile\n"
        "open('planted.txt', 'w').write('x')\n"
        "try:\n"
        "    open(os.path.join(tempfile.gettempdir(), '..', 'planted_tmp'), 'w').write('x')\n"
        "except OSError:\n"
        "    pass\n"
        "os.kill(-1, signal.SIGKILL)\n"
        "print('survived')\n"
    )
    result = sandbox.run(code)
    assert isinstance(result.exit_code, int)  # a result, whatever the kill reached
    follow_up = sandbox.run("import os\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))")
    assert follow_up.exit_code == 0, follow_up.stderr
    cwd_entries, tmp_entries = follow_up.stdout.split("] [")
    assert cwd_entries == "[" and "planted" not in tmp_entries  # nothing of the killed call persists
