"""Shared by the sandbox contract and security suites: the backend parameters and how a test gets a sandbox."""

from __future__ import annotations

import pytest

from amrsd_envs.sandbox import Sandbox, make_sandbox
from amrsd_envs.sandbox.testing import docker_test_options, docker_unavailable_reason

BACKEND_PARAMS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="session")
def docker_ready() -> None:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(f"docker backend cannot run here: {reason}")


def new_sandbox(backend: str, request: pytest.FixtureRequest, **options) -> Sandbox:
    """A sandbox of ``backend``; docker ones use the registry-free test image."""
    if backend == "docker":
        request.getfixturevalue("docker_ready")
        options = {**docker_test_options(), **options}
    return make_sandbox(backend, **options)
