"""The ``http_request`` tool: HTTP to the hosts a task allows, and nowhere else.

A URL is parsed with httpx; its ``host:port`` (port defaulted from the scheme) must equal an entry
of ``ctx.allowed_hosts`` (an entry without a port allows the scheme's default port only).
Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, and each target is checked the same
way, so a redirect cannot lead to another host. The body read is bounded by :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import functools
import ssl

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from amrsd_envs.tools.base import ToolError, tool
from amrsd_envs.tools.context import ToolContext, normalize_host

__all__ = ["HttpRequestArgs", "check_url_allowed", "http_request"]

MAX_REDIRECTS = 3
MAX_BODY_BYTES = 256_000
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpRequestArgs(BaseModel):
    """Arguments of the http_request tool."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Literal["GET", "POST", "PUT", "DELETE"] = Field(description="HTTP method.")
    url: str = Field(
        description="A path on this task's service, e.g. '/items' (resolved against its base URL), or an absolute "
        "http(s) URL on a host this task allows.",
        min_length=1,
        max_length=2_000,
    )
    json_body: dict[str, Any] | None = Field(
        default=None,
        alias="json",
        description="JSON object to send as the request body (POST/PUT), or null for none.",
    )


def _url_host(url: Any) -> str:
    """The URL's host in :func:`normalize_host` form (lowercase, IPv6 bracketed), without port."""
    host = url.host.lower()
    return f"[{host}]" if ":" in host else host  # httpx gives IPv6 literals without brackets


def check_url_allowed(raw_url: str, allowed_hosts: frozenset[str]) -> Any:
    """The parsed ``httpx.URL`` if ``raw_url`` is http(s) on an allowed host:port; else ToolError."""
    import httpx

    try:
        url = httpx.URL(raw_url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ToolError(f"invalid URL {raw_url!r}: {exc}") from None
    if url.scheme not in _DEFAULT_PORTS:
        raise ToolError(f"only http and https URLs are allowed, got {raw_url!r}")
    if not url.host:
        raise ToolError(f"URL {raw_url!r} has no host")
    bare = _url_host(url)
    with_port = f"{bare}:{url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]}"
    default_port = url.port is None or url.port == _DEFAULT_PORTS[url.scheme]
    allowed = {normalize_host(h) for h in allowed_hosts}
    if with_port in allowed or (default_port and bare in allowed):
        return url
    listing = ", ".join(sorted(allowed)) if allowed else "(none: this task allows no HTTP access)"
    raise ToolError(f"host {with_port} is not allowed; allowed hosts: {listing}")


@dataclass(frozen=True)
class _Body:
    """A response body read up to the size bound; ``cut`` says whether the bound was hit."""

    data: bytes
    cut: bool


def _read_body(response: Any) -> _Body:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _Body(b"".join(chunks)[:MAX_BODY_BYTES], cut=True)
    return _Body(b"".join(chunks), cut=False)


def _describe(response: Any, body: _Body) -> str:
    text = body.data.decode(response.encoding or "utf-8", errors="replace")
    content_type = response.headers.get("content-type", "")
    head = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if content_type:
        head += f"\ncontent-type: {content_type}"
    tail = f"\n[body cut at {MAX_BODY_BYTES} bytes]" if body.cut else ""
    return f"{head}\n\n{text}{tail}"


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    # Built once per process: a new httpx.Client otherwise builds a context and loads the CA bundle per request
    # (about 60 ms here, most of an HTTP episode's time). The context is only read after it is made.
    return ssl.create_default_context()


def perform_request(ctx: ToolContext, method: str, url: str, json_body: dict[str, Any] | None) -> str:
    """Send the request under the host policy; the status line, content type and body as text."""
    import httpx

    if url.startswith("/"):
        # The task's service runs on a port chosen at run time, so prompts and oracles name paths, not hosts.
        if ctx.http_base_url is None:
            raise ToolError(f"{url!r} is a path, but this task has no service to resolve it against; use a full URL")
        url = ctx.http_base_url.rstrip("/") + url
    target = check_url_allowed(url, ctx.allowed_hosts)
    request_method, body = method, json_body
    with httpx.Client(timeout=ctx.http_timeout_s, follow_redirects=False, trust_env=False,
                      verify=_tls_context()) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with client.stream(request_method, target, json=body) as response:
                    if response.is_redirect and "location" in response.headers:
                        next_url = target.join(response.headers["location"])
                        target = check_url_allowed(str(next_url), ctx.allowed_hosts)
                        if response.status_code in (301, 302, 303) and request_method != "GET":
                            # What browsers and httpx do: the redirected request becomes a GET.
                            request_method, body = "GET", None
                        continue
                    return _describe(response, _read_body(response))
            except httpx.TimeoutException:
                raise ToolError(f"the request to {target} timed out after {ctx.http_timeout_s:g} s") from None
            except httpx.HTTPError as exc:
                raise ToolError(f"the request to {target} failed: {type(exc).__name__}: {exc}") from None
    raise ToolError(f"more than {MAX_REDIRECTS} redirects; stopped at {target}")


@tool(
    name="http_request",
    description=(
        "Send an HTTP request (GET/POST/PUT/DELETE, optional JSON body) to a service this task "
        "allows, and see the status and response body."
    ),
    args=HttpRequestArgs,
)
def http_request(args: HttpRequestArgs, ctx: ToolContext) -> str:
    """Send ``args.method`` to ``args.url`` with ``args.json_body``."""
    return perform_request(ctx, args.method, args.url, args.json_body)
