"""The ``openai`` engine against a real ``vllm serve`` (the CPU build, in vLLM's own venv), not a mock.

The server runs from bench/.venv-vllm (bench/vllm_env.py) on the tiny model warm-started on ``test.calc``
(tests/conftest.py), with ``--dtype float32 --logprobs-mode raw_logprobs``; this process talks to it over HTTP
with the engine from the main venv, and compares with the ``hf`` engine on the same folder:

(a) the log-probs the server reports for its own samples, and the engine's ``score`` (``prompt_logprobs`` and
    ``echo``), equal the HF engine's ``score`` of the same ids within ``TOL``; greedy decoding equals HF's;
(b) stop strings, stop token ids, ``max_new_tokens``, ``n > 1`` over several prompts and seeds behave per the
    ``Engine`` protocol; ``update_weights`` refuses clearly; ``amrsd-eval --policy openai`` runs against the server;
(c) a server killed while a batch is in flight ends the call with a clear error naming the URL (bounded in time);
(d) a refused connection at start gives a clear error naming the URL (no server needed; runs in the fast suite).

One server serves the module (started on first use, about a minute here); (c) kills it, and a later test that needs
it starts a fresh one. Teardown kills the server's whole process group and checks that nothing of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from conftest import TEST_TASKS

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # float32 on both sides, as in tests/test_engine_vllm.py
START_TIMEOUT_S = 420

vllm_slow = [pytest.mark.slow, pytest.mark.vllm]


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


class VLLMServer:
    """``vllm serve`` in its own process group, restartable (test (c) kills it)."""

    def __init__(self, python: Path, model_dir: Path, workdir: Path) -> None:
        self.python, self.model_dir, self.workdir = python, model_dir, workdir
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log_path = workdir / "vllm-server.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> str:
        if not self.alive():
            self.stop()
            self.start()
        return self.url

    def start(self) -> None:
        port = _free_port()
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
               "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
               "--logprobs-mode", "raw_logprobs", "--enforce-eager"]
        log = open(self.log_path, "a")  # noqa: SIM115 (the server writes to it for its whole life)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                     start_new_session=True)  # its own process group, killed as a whole
        log.close()
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return
            time.sleep(1)
        self.stop()
        pytest.fail(f"vllm serve did not become healthy in {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's whole process group."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL what is left after 20 s, and wait until no process of it remains."""
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group_members(self.proc.pid) and time.monotonic() < deadline:
            self.kill(signal.SIGKILL)
            time.sleep(0.2)
        left = _group_members(self.proc.pid)
        assert not left, f"vllm server processes left behind: {left}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("amrsd_bench_vllm_env", REPO / "bench" / "vllm_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.ensure_vllm_venv()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create vLLM's venv (pip cannot reach the package registry?): {exc}")


@pytest.fixture(scope="module")
def vllm_server(vllm_python, tiny_calc, tmp_path_factory):
    server = VLLMServer(vllm_python, tiny_calc, tmp_path_factory.mktemp("vllm-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server_url(vllm_server) -> str:
    return vllm_server.ensure_running()


@pytest.fixture(scope="module")
def hf(tiny_calc):
    from amrsd_train.engines import make_engine

    return make_engine("hf", model=str(tiny_calc))


def _engine(url: str, tiny_calc: Path, **kwargs):
    from amrsd_train.engines import make_engine

    return make_engine("openai", base_url=url, model=str(tiny_calc), **kwargs)


def _prompt(tok, question: str = "What is 17 + 25?") -> list[int]:
    messages = [{"role": "system", "content": "Use the calculator."}, {"role": "user", "content": question}]
    return tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


# ---------------------------------------------------------------------------------------------------------- (d)


def test_connection_refused_names_the_url(monkeypatch):
    from amrsd_envs.openai_policy import OpenAIPolicy
    from amrsd_train.engines import make_engine
    from amrsd_train.engines.openai import OpenAIEngineError

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(OpenAIEngineError) as info:
        make_engine("openai", base_url=url, model="m", tokenizer=object(), max_retries=2, backoff_s=0.05)
    message = str(info.value)
    assert f"{url}/models" in message and "3 attempt(s)" in message and "ConnectError" in message, message
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="base_url"):
        make_engine("openai", base_url="", model="m")
    with pytest.raises(TypeError, match="engine: vllm"):
        make_engine("openai", base_url=url, model=torch.nn.Linear(2, 2))

    policy = OpenAIPolicy(base_url=url, model="m", max_retries=1)
    try:
        with pytest.raises(RuntimeError, match=f"{url}/chat/completions failed after 2 attempt"):
            policy([{"role": "user", "content": "hi"}])
    finally:
        policy.close()


# ---------------------------------------------------------------------------------------------------------- (a)


@pytest.mark.slow
@pytest.mark.vllm
def test_generate_and_score_match_hf(server_url, tiny_calc, hf):
    from amrsd_train.engines import SamplingParams
    from amrsd_train.trainer import STOP_STRINGS

    with _engine(server_url, tiny_calc) as engine, _engine(server_url, tiny_calc, score_via="echo") as echo:
        assert engine.max_model_len == 1024
        prompt = _prompt(engine.tokenizer)
        params = SamplingParams(temperature=1.0, max_new_tokens=48, n=4, seed=7, stop_strings=STOP_STRINGS)
        samples = engine.generate([prompt], params)[0]
        assert len(samples) == 4 and all(c.token_ids for c in samples)
        for c in samples:
            ids = prompt + c.token_ids
            ref = hf.score([ids])[0]
            mask = [0] * len(prompt) + [1] * len(c.token_ids)
            gen = torch.tensor(c.logprobs)
            assert (gen - ref[len(prompt):]).abs().max().item() < TOL, (c, ref[len(prompt):])
            for scorer in (engine, echo):
                full = scorer.score([ids])[0]
                assert full.dtype == torch.float32 and full.shape == (len(ids),) and full[0] == 0
                assert (full - ref).abs().max().item() < TOL
                masked = scorer.score([ids], [mask])[0]
                assert (masked[: len(prompt)] == 0).all()
                assert (masked[len(prompt):] - ref[len(prompt):]).abs().max().item() < TOL
        # several sequences in one call, a one-token sequence, and an all-zero mask (no request needed)
        seqs = [prompt + samples[0].token_ids, prompt[:1], prompt]
        out = engine.score(seqs, [[1] * len(seqs[0]), [1], [0] * len(prompt)])
        assert [len(o) for o in out] == [len(s) for s in seqs] and out[1].tolist() == [0.0] and not out[2].any()
        assert (out[0] - hf.score([seqs[0]])[0]).abs().max().item() < TOL
        # seeded sampling is reproducible; greedy decoding is HF's
        assert [c.token_ids for c in engine.generate([prompt], params)[0]] == [c.token_ids for c in samples]
        greedy = SamplingParams(temperature=0.0, max_new_tokens=24)
        assert engine.generate([prompt], greedy)[0][0].token_ids == hf.generate([prompt], greedy)[0][0].token_ids


# ---------------------------------------------------------------------------------------------------------- (b)


@pytest.mark.slow
@pytest.mark.vllm
def test_stop_strings_stop_ids_and_n(server_url, tiny_calc):
    from amrsd_train.engines import SamplingParams

    with _engine(server_url, tiny_calc) as engine:
        tok = engine.tokenizer
        eos = {tok.eos_token_id, *(getattr(tok, "all_special_ids", []) or [])}
        prompts = [_prompt(tok, q) for q in ("What is 17 + 25?", "What is 3 * 14?", "Compute 100 - 58.")]

        def decode(ids):
            return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

        # n > 1 over several prompts, with stop strings the tiny model does produce
        stops = ("name", "arguments")
        params = SamplingParams(temperature=1.0, max_new_tokens=40, n=3, seed=11, stop_strings=stops)
        result = engine.generate(prompts, params)
        assert len(result) == 3 and all(len(row) == 3 for row in result)
        reasons = []
        for row in result:
            for c in row:
                assert len(c.token_ids) == len(c.logprobs) >= 1 and all(lp <= 0 for lp in c.logprobs)
                reasons.append(c.finish_reason)
                if c.finish_reason == "stop_string":  # kept in text and ids; ends within the last token
                    assert c.text == decode(c.token_ids) and any(s in c.text for s in stops)
                    assert not any(s in decode(c.token_ids[:-1]) for s in stops), c
                elif c.finish_reason == "stop":  # the EOS id is kept in the ids, not in the text
                    assert c.token_ids[-1] in eos and c.text == decode(c.token_ids[:-1])
                else:
                    assert len(c.token_ids) == 40 and c.text == decode(c.token_ids)
        assert "stop_string" in reasons, reasons
        # a seed gives the same completions again, and the rows of one prompt are not all the same
        assert [[c.token_ids for c in row] for row in engine.generate(prompts, params)] == \
               [[c.token_ids for c in row] for row in result]
        many = engine.generate(prompts[:1], SamplingParams(temperature=1.0, max_new_tokens=16, n=6, seed=3))[0]
        assert len({tuple(c.token_ids) for c in many}) > 1

        # stop token ids end the completion and stay in the ids; max_new_tokens gives "length"
        greedy = engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=16))[0][0]
        assert len(greedy.token_ids) >= 3, greedy
        stop_id = greedy.token_ids[1]
        stopped = engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=16,
                                                              stop_token_ids=(stop_id,)))[0][0]
        first = greedy.token_ids.index(stop_id)
        assert stopped.finish_reason == "stop" and stopped.token_ids == greedy.token_ids[: first + 1]
        assert stopped.text == decode(stopped.token_ids[:-1])
        short = engine.generate(prompts[:1], SamplingParams(temperature=0.0, max_new_tokens=2))[0][0]
        assert short.finish_reason == "length" and short.token_ids == greedy.token_ids[:2]

        # the protocol's argument checks, and no weight updates on a remote server
        with pytest.raises(ValueError, match="empty"):
            engine.generate([[]], params)
        with pytest.raises(ValueError, match="outside"):
            engine.score([[0, engine.vocab_size]])
        with pytest.raises(NotImplementedError, match="engine: vllm"):
            engine.update_weights({})


@pytest.mark.slow
@pytest.mark.vllm
def test_amrsd_eval_with_the_openai_policy(server_url, tiny_calc, tmp_path):
    """``amrsd-eval --policy openai`` (chat completions, tools sent) against a vLLM server with no tool parser."""
    from amrsd_envs.cli import eval_main

    out = tmp_path / "report.json"
    code = eval_main(["--env", "AMRSD-ToolUse-v0", "--tasks", TEST_TASKS, "--families", "test.calc",
                      "--policy", "openai", "--base-url", server_url, "--model", str(tiny_calc),
                      "--n-tasks", "2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n_tasks"] == 2 and all(e["turns"] >= 1 for e in report["episodes"])


# ---------------------------------------------------------------------------------------------------------- (c)
# Last in the file: it kills the module's server (a test after it would start a fresh one).


@pytest.mark.slow
@pytest.mark.vllm
def test_server_dying_mid_batch_raises_instead_of_hanging(vllm_server, server_url, tiny_calc):
    from amrsd_train.engines import SamplingParams
    from amrsd_train.engines.openai import OpenAIEngineError

    # ignore_eos keeps 64 rows decoding for hundreds of steps, so the batch is surely in flight when the server dies
    engine = _engine(server_url, tiny_calc, max_retries=3, backoff_s=0.2, extra_body={"ignore_eos": True})
    prompts = [_prompt(engine.tokenizer, f"What is {i} + {i}?") for i in range(16)]
    params = SamplingParams(temperature=1.0, max_new_tokens=900, n=4, seed=0)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["result"] = engine.generate(prompts, params)
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread)
            outcome["error"] = exc

    worker = threading.Thread(target=call, daemon=True)
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the server is decoding the batch
            with contextlib.suppress(httpx.HTTPError):
                metrics = httpx.get(server_url.removesuffix("/v1") + "/metrics", timeout=2).text
                running = [line for line in metrics.splitlines() if line.startswith("vllm:num_requests_running")]
                if running and float(running[0].rsplit(" ", 1)[1]) > 0:
                    break
            time.sleep(0.2)
        time.sleep(1.0)
        assert worker.is_alive(), "the batch finished before the server could be killed; make it longer"
        killed_at = time.monotonic()
        vllm_server.kill(signal.SIGKILL)
        worker.join(timeout=120)
        assert not worker.is_alive(), "generate hung after the server died"
        elapsed = time.monotonic() - killed_at
        error = outcome.get("error")
        assert isinstance(error, OpenAIEngineError), outcome
        message = str(error)
        assert f"{server_url}/completions" in message and "4 attempt(s)" in message, message
        print(f"server killed mid-batch: {type(error).__name__} after {elapsed:.1f} s: {message}")
    finally:
        engine.close()
        vllm_server.stop()
    assert not vllm_server.alive()
