"""A policy backed by any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, SGLang, llama.cpp, ...).

Connection errors, dropped connections, HTTP 5xx and 429 are retried with exponential backoff; after the last try the
error names the URL and the last failure. A vLLM server started without ``--enable-auto-tool-choice`` refuses
``tools`` with the default ``tool_choice: auto``; the policy then sends ``tool_choice: none`` (vLLM still renders the
tools into the chat template, and the reply's plain-text ``<tool_call>`` blocks are what the env parses).
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import httpx

from amrsd_envs.toolcalls import ToolCall, render_tool_calls


class OpenAIPolicy:
    """Sends the conversation (and the tool schemas) to a chat-completions endpoint and returns the reply text.

    Structured ``tool_calls`` in the reply are rendered back into the Hermes ``<tool_call>`` text format the env
    parses, so servers with and without a tool-call parser both work.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (default ``$OPENAI_BASE_URL``).
        model: the served model name (default ``$OPENAI_MODEL``).
        api_key: bearer token (default ``$OPENAI_API_KEY``; many local servers ignore it).
        temperature, top_p, max_tokens: sampling settings sent with every request.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt for connection errors, 5xx and 429 (backoff 0.5 s, doubling).
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        timeout_s: float = 120.0,
        max_retries: int = 4,
    ):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or os.environ.get("OPENAI_MODEL") or ""
        if not self.base_url:
            raise ValueError("the openai policy needs base_url (or $OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        if not self.model:
            raise ValueError("the openai policy needs model (or $OPENAI_MODEL): the name the server serves")
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.max_retries = max_retries
        self._tool_choice: str | None = None  # "none" once the server refused tool_choice=auto
        self._client = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            headers={"Authorization": f"Bearer {key}"},
        )

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": _wire_messages(messages), **self.sampling}
        if tools:
            body["tools"] = tools
            if self._tool_choice:
                body["tool_choice"] = self._tool_choice
        resp = self._post(body)
        refused_auto = resp.status_code == 400 and "tool" in resp.text and "choice" in resp.text
        if refused_auto and tools and not self._tool_choice:
            self._tool_choice = "none"  # e.g. vLLM without --enable-auto-tool-choice: plain-text tool calls
            resp = self._post({**body, "tool_choice": "none"})
        if resp.status_code != 200:
            raise RuntimeError(f"{self.base_url}/chat/completions answered {resp.status_code}: {resp.text[:500]}")
        msg = resp.json()["choices"][0]["message"]
        text = msg.get("content") or ""
        calls = []
        for call in msg.get("tool_calls") or []:
            fn = call.get("function", {})
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    args = {"_raw": args}
            calls.append(ToolCall(name=fn.get("name", ""), arguments=args if isinstance(args, dict) else {}))
        if calls:
            text = (text + "\n" if text else "") + render_tool_calls(calls)
        return text

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        """POST to /chat/completions, retrying connection errors, 5xx and 429 with exponential backoff."""
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                resp = self._client.post("/chat/completions", json=body)
            except httpx.ReadTimeout as exc:  # the server is up but slow: a retry would likely time out again
                raise RuntimeError(f"{self.base_url}/chat/completions timed out: {exc!r}") from exc
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc or 'connection failed'}"
            else:
                if resp.status_code != 429 and resp.status_code < 500:
                    return resp
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if attempt < self.max_retries:
                time.sleep(min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.25))
        raise RuntimeError(
            f"{self.base_url}/chat/completions failed after {self.max_retries + 1} attempt(s); last failure: {last}"
        )

    def close(self) -> None:
        self._client.close()


def _wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our transcript uses plain-text tool calls; send tool results as role=tool with their name."""
    out = []
    for m in messages:
        wire = {"role": m["role"], "content": m["content"]}
        if m["role"] == "tool" and m.get("name"):
            wire["name"] = m["name"]
        out.append(wire)
    return out
