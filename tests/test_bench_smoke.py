"""Smoke tests of the benchmark scripts' peers (tiny n): they run and print the right thing, nothing is timed.

bench/sandbox_latency.py: the warm zygote without namespaces (RLIMITS) and the ``docker exec`` peer;
bench/verify_throughput.py: the model-like responses and the 2-process raw Math-Verify pool.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:  # the spawned Math-Verify workers import verify_throughput by this path too
    sys.path.insert(0, str(BENCH))

import sandbox_latency  # noqa: E402
import verify_throughput  # noqa: E402


def test_rlimits_row_and_verdicts() -> None:
    from amrsd_envs.sandbox import IsolationLevel, make_sandbox

    with make_sandbox("local", isolation=IsolationLevel.RLIMITS) as sb:
        assert sb.isolation is IsolationLevel.RLIMITS
        row = sandbox_latency.measure(
            "local warm, no namespaces (RLIMITS)", lambda: sb.run(sandbox_latency.SNIPPET).stdout, 1, 3, warmup=1
        )
    assert row.calls == 3 and row.p50_ms > 0 and row.p95_ms >= row.p50_ms
    base = sandbox_latency.Row("python -I -S -c (subprocess)", 1, 3, 2.0 * row.p50_ms, 2.0 * row.p95_ms, 1.0)
    local = sandbox_latency.Row("local warm (BWRAP)", 1, 3, row.p50_ms, row.p95_ms, 1.0)
    rows = [base, local, row]
    lines = sandbox_latency.verdicts(rows)
    assert any(line.startswith("workers=1: isolation cost:") for line in lines), lines
    assert all("p95" in line for line in lines), lines
    table = sandbox_latency.format_table(rows)
    assert "local warm, no namespaces (RLIMITS)" in table and "p95 vs python -c" in table


@pytest.mark.docker
def test_docker_exec_peer() -> None:
    from amrsd_envs.sandbox.local import default_python
    from amrsd_envs.sandbox.testing import docker_test_options, docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(f"docker cannot run here: {reason}")
    options = docker_test_options()
    with sandbox_latency.docker_exec_peer(options["image"], options["binds"], default_python(), 1) as call:
        row = sandbox_latency.measure("docker exec (running ctr)", call, 1, 2, warmup=1)
    assert row.calls == 2 and row.p95_ms >= row.p50_ms > 0


def test_model_like_pairs() -> None:
    pairs = verify_throughput.make_pairs(60, 0)
    assert [p.answer for p in pairs] == [p.answer for p in verify_throughput.make_pairs(60, 0)]
    assert {p.form for p in pairs} == set(verify_throughput.FORMS)
    for p in pairs:
        text = p.model_response
        assert text.startswith("Let's solve this step by step.") and p.model_answer in text
        assert (r"\boxed{" in text) == (p.form == "boxed")
        assert ("**Final Answer:**" in text) == (p.form == "answer line")
        assert p.model_tagged_response.endswith(f"<answer>{p.model_answer}</answer>")
        assert p.response("clean") == p.boxed_response
    dressed = " ".join(p.model_answer for p in pairs)
    for piece in ("x = ", r"\text{ cm}", "{,}", r"\in \{", r"\dfrac"):
        assert piece in dressed, piece


@pytest.mark.slow
def test_raw_math_verify_pool_and_main(capsys: pytest.CaptureFixture[str]) -> None:
    verify_throughput.main(["--pairs", "5", "--passes", "1", "--skip-rg", "--styles", "model"])
    out = capsys.readouterr().out
    for name in ("raw math_verify", "raw math_verify (2 processes)", "amrsd check (1 thread)", "amrsd check (2 threads)"):
        assert f"| model      | {name:<29} |" in out, out
    assert "model: amrsd check (2 threads) / raw math_verify (2 processes) =" in out
    assert "| sentence    |" in out and "| clean      |" not in out
