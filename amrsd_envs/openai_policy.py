"""A policy backed by any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, SGLang, llama.cpp, ...)."""

from __future__ import annotations

import json
import os
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
    ):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        self.model = model or os.environ.get("OPENAI_MODEL") or ""
        if not self.base_url:
            raise ValueError("the openai policy needs base_url (or $OPENAI_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        if not self.model:
            raise ValueError("the openai policy needs model (or $OPENAI_MODEL): the name the server serves")
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self._client = httpx.Client(
            base_url=self.base_url, timeout=timeout_s, headers={"Authorization": f"Bearer {key}"}
        )

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": _wire_messages(messages), **self.sampling}
        if tools:
            body["tools"] = tools
        resp = self._client.post("/chat/completions", json=body)
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
