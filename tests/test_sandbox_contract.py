"""The Sandbox contract, checked on every backend (local at its strongest level, and docker).

Docker tests carry ``@pytest.mark.docker``; they start the engine and build the test image through the
repository's scripts when needed and skip (with the reason) only where no engine can run.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from amrsd_envs.sandbox import BACKENDS, ExecResult, IsolationLevel, Sandbox, SandboxError, make_sandbox
from amrsd_envs.sandbox.testing import processes_with_marker

from _sandbox_fixtures import BACKEND_PARAMS, docker_ready, new_sandbox  # noqa: F401,E402


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def sandbox(request: pytest.FixtureRequest):
    sb = new_sandbox(request.param, request)
    yield sb
    sb.close()


# ------------------------------------------------------------------------------------------ basics
def test_stdout_stderr_and_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nprint('to out')\nprint('to err', file=sys.stderr)")
    assert isinstance(result, ExecResult)
    assert result.stdout == "to out\n"
    assert result.stderr == "to err\n"
    assert result.exit_code == 0
    assert not result.timed_out and not result.truncated
    assert result.ok
    assert result.duration_s >= 0


def test_sys_exit_codes_and_exceptions(sandbox: Sandbox) -> None:
    assert sandbox.run("import sys; sys.exit(3)").exit_code == 3
    message = sandbox.run("import sys; sys.exit('bad input')")
    assert message.exit_code == 1 and "bad input" in message.stderr
    raised = sandbox.run("def f():\n    raise KeyError('k')\nf()")
    assert raised.exit_code == 1
    assert "Traceback" in raised.stderr and "KeyError: 'k'" in raised.stderr
    assert "amrsd-zygote" not in raised.stderr  # the sandbox's own frames are not shown


def test_syntax_error(sandbox: Sandbox) -> None:
    result = sandbox.run("def broken(:\n    pass")
    assert result.exit_code == 1
    assert "SyntaxError" in result.stderr
    assert result.stdout == ""


def test_files_are_in_the_working_directory(sandbox: Sandbox) -> None:
    files = {"data.txt": "hello", "sub/dir/blob.bin": b"\x00\x01\xff", "helper.py": "VALUE = 42\n"}
    code = (
        "import os, helper\n"
        "print(open('data.txt').read())\n"
        "print(list(open('sub/dir/blob.bin', 'rb').read()))\n"
        "print(helper.VALUE)\n"
        "print(os.getcwd() == os.environ['HOME'])\n"
    )
    result = sandbox.run(code, files=files)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["hello", "[0, 1, 255]", "42", "True"]


def test_fresh_working_directory_each_call(sandbox: Sandbox) -> None:
    first = sandbox.run(
        "import os, tempfile\n"
        "open('left_behind.txt', 'w').write('x')\n"
        "open(os.path.join(tempfile.gettempdir(), 'tmp_left.txt'), 'w').write('x')\n"
        "print(os.getcwd())",
        files={"input.txt": "1"},
    )
    assert first.exit_code == 0, first.stderr
    second = sandbox.run(
        "import os, tempfile\n"
        "print(sorted(os.listdir('.')))\n"
        "print(os.path.exists(os.path.join(tempfile.gettempdir(), 'tmp_left.txt')))"
    )
    assert second.exit_code == 0, second.stderr
    assert second.stdout.splitlines() == ["[]", "False"]


def test_unicode_round_trip(sandbox: Sandbox) -> None:
    text = "héllo ✓ 世界 🎉"
    result = sandbox.run(
        "import sys\nprint(open('ünï.txt', encoding='utf-8').read())\nprint(sys.stdin.read().upper())",
        files={"ünï.txt": text},
        stdin="ß and ω",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [text, "SS AND Ω"]


def test_stdin(sandbox: Sandbox) -> None:
    result = sandbox.run("a, b = int(input()), int(input())\nprint(a * b)", stdin="6\n7\n")
    assert result.stdout == "42\n"
    no_stdin = sandbox.run("import sys\nprint(repr(sys.stdin.read()))")
    assert no_stdin.stdout == "''\n"


def test_timeout_kills_and_reports(sandbox: Sandbox) -> None:
    started = time.monotonic()
    result = sandbox.run("print('started', flush=True)\nwhile True:\n    pass", timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_code != 0
    assert result.stdout == "started\n"  # output before the kill is kept
    # The configured timeout is the one enforced: not earlier, and nowhere near the 10 s default.
    assert result.duration_s >= 0.9
    assert elapsed < 8.0
    after = sandbox.run("print('alive')")
    assert after.stdout == "alive\n" and not after.timed_out


def test_default_timeout_comes_from_the_constructor(request: pytest.FixtureRequest) -> None:
    with new_sandbox("local", request, timeout_s=0.5) as sb:
        result = sb.run("import time\ntime.sleep(30)")
    assert result.timed_out and result.duration_s < 5


def test_output_truncated_at_the_default_cap(sandbox: Sandbox) -> None:
    result = sandbox.run("import sys\nsys.stdout.write('a' * 200_000)\nsys.stderr.write('b' * 10)")
    assert result.exit_code == 0
    assert result.truncated
    assert result.stdout == "a" * 65536
    assert result.stderr == "b" * 10


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_output_cap_is_configurable(backend: str, request: pytest.FixtureRequest) -> None:
    with new_sandbox(backend, request, max_output_bytes=100) as sb:
        long = sb.run("print('x' * 1000)")
        short = sb.run("print('y' * 10)")
    assert long.truncated and long.stdout == "x" * 100
    assert not short.truncated and short.stdout == "y" * 10 + "\n"


def test_memory_limit_reaches_the_process(sandbox: Sandbox) -> None:
    code = "data = bytearray(200 * 1024 * 1024)\nprint(len(data))"
    small = sandbox.run(code, memory_mb=64)
    assert small.exit_code != 0
    assert "MemoryError" in small.stderr
    fits = sandbox.run(code, memory_mb=512)
    assert fits.exit_code == 0, fits.stderr
    assert fits.stdout == f"{200 * 1024 * 1024}\n"


def test_calls_get_independent_random_state(sandbox: Sandbox) -> None:
    draws = {sandbox.run("import random\nprint(random.random())").stdout for _ in range(3)}
    assert len(draws) == 3


def test_concurrent_calls_from_threads(sandbox: Sandbox) -> None:
    results: dict[int, ExecResult] = {}

    def work(i: int) -> None:
        results[i] = sandbox.run(f"import time\ntime.sleep(0.05)\nprint({i} * {i})", files={"n.txt": str(i)})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i * i}\n" for i in range(6)}


# ------------------------------------------------------------------------------------------ lifecycle
def test_close_leaves_no_processes_local() -> None:
    sb = make_sandbox("local")
    assert sb.run("print(1)").stdout == "1\n"
    assert processes_with_marker(sb.instance_id), "the scan must see the running sandbox"
    sb.close()
    deadline = time.monotonic() + 5
    while processes_with_marker(sb.instance_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with_marker(sb.instance_id) == []
    with pytest.raises(SandboxError, match="closed"):
        sb.run("print(1)")
    sb.close()  # idempotent


@pytest.mark.docker
def test_close_leaves_no_containers_docker(request: pytest.FixtureRequest) -> None:
    import docker

    sb = new_sandbox("docker", request, pool_size=2)
    client = docker.from_env()
    label = {"label": f"amrsd.sandbox.instance={sb.instance_id}"}
    assert len(client.containers.list(all=True, filters=label)) == 2
    assert sb.run("print(1)").stdout == "1\n"
    sb.close()
    assert client.containers.list(all=True, filters=label) == []
    assert processes_with_marker(sb.instance_id) == []
    with pytest.raises(SandboxError, match="closed"):
        sb.run("print(1)")


def test_local_recovers_when_its_zygote_is_killed() -> None:
    import os
    import signal

    with make_sandbox("local") as sb:
        assert sb.run("print(1)").stdout == "1\n"
        for pid in processes_with_marker(sb.instance_id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # a spare that ended on its own since the scan
        results = [sb.run("print(2)") for _ in range(2)]
    # The call that found the zygote dead reports it instead of raising; later calls run again.
    assert results[-1].stdout == "2\n"
    assert all(isinstance(r, ExecResult) for r in results)


@pytest.mark.docker
def test_docker_recovers_when_its_container_is_killed(request: pytest.FixtureRequest) -> None:
    import docker

    with new_sandbox("docker", request) as sb:
        (first_id,) = sb.container_ids
        docker.from_env().containers.get(first_id).kill()
        results = [sb.run("print(2)") for _ in range(2)]
        assert results[-1].stdout == "2\n"
        assert sb.container_ids and sb.container_ids != [first_id]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_host_backstop_replaces_a_wedged_sandbox(backend: str, request: pytest.FixtureRequest) -> None:
    import os
    import signal

    with new_sandbox(backend, request) as sb:
        assert sb.run("print(1)").stdout == "1\n"
        frozen = processes_with_marker(sb.instance_id)
        assert frozen
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGSTOP)  # nothing inside can answer or enforce its deadline now
            except ProcessLookupError:
                pass
        try:
            started = time.monotonic()
            wedged = sb.run("print(2)", timeout_s=0.5)
            waited = time.monotonic() - started
        finally:
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        assert wedged.timed_out and wedged.exit_code != 0
        assert "did not answer" in wedged.stderr
        assert waited < 30
        assert sb.run("print(3)").stdout == "3\n"
    assert wait_gone(sb.instance_id) == []


def wait_gone(marker: str, timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_with_marker(marker)


# ------------------------------------------------------------------------------------------ local levels
def _bwrap_missing() -> bool:
    return shutil.which("bwrap") is None


@pytest.mark.parametrize(
    "level",
    [
        pytest.param(
            IsolationLevel.BWRAP,
            marks=pytest.mark.skipif(_bwrap_missing(), reason="bubblewrap is not installed (apt-get install bubblewrap)"),
        ),
        IsolationLevel.NAMESPACES,
        IsolationLevel.RLIMITS,
    ],
)
@pytest.mark.parametrize("warm", [True, False])
def test_every_local_level_keeps_the_contract(level: IsolationLevel, warm: bool) -> None:
    with make_sandbox("local", isolation=level, warm=warm) as sb:
        assert sb.isolation is level
        ok = sb.run("import os\nprint(open('f.txt').read(), sorted(os.listdir('.')))", files={"f.txt": "in"})
        left = sb.run("open('junk', 'w').write('1')")
        fresh = sb.run("import os\nprint(os.listdir('.'))")
        slow = sb.run("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      "while True:\n    pass", timeout_s=0.5)
        crash = sb.run("import os\nos.abort()")
        caps = sb.run(
            "import os\nf = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "print(os.getuid(), f['CapEff'].strip(), f['CapBnd'].strip(), f['NoNewPrivs'].strip())"
        )
    assert ok.stdout == "in ['f.txt']\n", ok.stderr
    uid, effective, bounding, no_new_privs = caps.stdout.split()
    assert effective == "0000000000000000" and no_new_privs == "1"
    if uid == "0":  # execve would hand uid 0 its bounding set: it must be empty too
        assert bounding == "0000000000000000"
    assert left.exit_code == 0
    assert fresh.stdout == "[]\n"
    assert slow.timed_out and slow.exit_code != 0
    assert crash.exit_code == -6


@pytest.mark.skipif(_bwrap_missing(), reason="bubblewrap is not installed (apt-get install bubblewrap)")
def test_strongest_level_is_chosen_and_recorded() -> None:
    with make_sandbox("local") as sb:
        assert sb.isolation is IsolationLevel.BWRAP
        assert sb.per_call_namespaces


def test_require_refuses_weaker_isolation() -> None:
    with pytest.raises(SandboxError, match="CONTAINER"):
        make_sandbox("local", require=IsolationLevel.CONTAINER)
    with pytest.raises(SandboxError, match="require=BWRAP"):
        make_sandbox("local", isolation=IsolationLevel.RLIMITS, require=IsolationLevel.BWRAP)


def test_local_pids_limit_reaches_the_process() -> None:
    code = (
        "import subprocess, sys\n"
        "procs, errors = [], 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        procs.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)']))\n"
        "    except OSError:\n"
        "        errors += 1\n"
        "print(len(procs), errors)\n"
    )
    with make_sandbox("local", pids=8) as sb:
        if sb.isolation < IsolationLevel.NAMESPACES:
            pytest.skip("RLIMIT_NPROC is counted per host user without namespaces")
        result = sb.run(code, timeout_s=5)
    started, errors = map(int, result.stdout.split())
    assert started < 8 and errors > 12


# ------------------------------------------------------------------------------------------ arguments
def test_unknown_backend_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid backends: \['docker', 'local'\]"):
        make_sandbox("firecracker")
    assert sorted(BACKENDS) == ["docker", "local"]


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="timeout"):
        make_sandbox("local", timeoutt_s=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"timeout_s": 0}, ValueError, "timeout_s"),
        ({"timeout_s": float("nan")}, ValueError, "timeout_s"),
        ({"memory_mb": 1}, ValueError, "memory_mb"),
        ({"files": {"/etc/passwd": "x"}}, ValueError, "relative path"),
        ({"files": {"../up.txt": "x"}}, ValueError, "relative path"),
        ({"files": {"a.txt": 3}}, TypeError, "str or bytes"),
        ({"stdin": b"bytes"}, TypeError, "stdin"),
    ],
)
def test_bad_arguments_raise_with_the_fix(kwargs: dict, error: type, match: str) -> None:
    with make_sandbox("local", isolation=IsolationLevel.RLIMITS) as sb:
        with pytest.raises(error, match=match):
            sb.run("print(1)", **kwargs)


def test_result_is_immutable_and_typed() -> None:
    result = ExecResult(stdout="", stderr="", exit_code=0, timed_out=False, duration_s=0.0, truncated=False)
    with pytest.raises(Exception, match="frozen"):
        result.exit_code = 1  # type: ignore[misc]
    assert result.ok
    assert not result.model_copy(update={"exit_code": 2}).ok
    assert not result.model_copy(update={"timed_out": True}).ok
