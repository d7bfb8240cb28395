"""Embedded models: the tiny build (tokenizer + weights), the chat template, resolution and caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from amrsd_train import models
from amrsd_train.models import (
    EMBEDDED_MODELS,
    MARKUP_TOKENS,
    ModelNotBuiltError,
    atomic_output_dir,
    build_tiny_model,
    is_model_dir,
    read_metadata,
    resolve_model,
)

CORPUS = [
    "Compute 17 * 23. Answer: \\boxed{391}",
    "A car travels 120 km in 2 h. Its speed is 60 km/h.",
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>',
    "<hint>Which unit does the question ask for?</hint>",
] * 5

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a fact up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
]

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'
CONVERSATION = [
    {"role": "system", "content": "Solve the task. Put the answer in \\boxed{}."},
    {"role": "user", "content": "What is 17 * 23?"},
    {"role": "assistant", "content": "I will use the calculator.\n" + CALL},
    {"role": "tool", "content": '{"result": "391"}'},
    {"role": "tool", "content": '{"note": "exact"}'},
    {"role": "assistant", "content": "The product is \\boxed{391}."},
    {"role": "user", "content": "And 2 + 2?"},
    {"role": "assistant", "content": "\\boxed{4}"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", CORPUS, seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_dir)


def render(tokenizer, messages, **kwargs) -> str:
    """Render with the full (Qwen2.5-style) template; the tiny tokenizer itself carries the compact variant."""
    kwargs.setdefault("chat_template", models.chat_template())
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


# ----------------------------------------------------------------------------------------- tiny build


def test_tiny_roundtrips_through_from_pretrained(tiny_dir: Path, tokenizer) -> None:
    assert is_model_dir(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = model.config
    assert config.model_type == "qwen2"
    assert config.hidden_size // config.num_attention_heads == 64  # vLLM's CPU attention needs head_dim 64
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (128, 4, 512)
    assert config.max_position_embeddings == 2048 and config.tie_word_embeddings
    assert config.vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    assert tokenizer.eos_token == "<|im_end|>" and config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert tokenizer.pad_token_id == 3 == config.pad_token_id
    assert set(model.generation_config.eos_token_id) == {tokenizer.convert_tokens_to_ids("<|im_end|>"), 0}
    assert tokenizer.chat_template == models.chat_template("compact")
    info = read_metadata(tiny_dir)
    assert info is not None and info.name == "tiny" and info.seed == 0 and info.vocab_size == len(tokenizer)
    # The loaded model is the saved one: a forward pass runs and gives finite logits of the right shape.
    ids = torch.tensor([tokenizer("What is 2 + 2?")["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_tiny_tokenizer_units(tokenizer) -> None:
    for token in MARKUP_TOKENS:
        ids = tokenizer(f"a {token} b")["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids
        assert len(tokenizer(token)["input_ids"]) == 1, token
    # Markup tokens are not special: they survive skip_special_tokens, while control tokens do not.
    text = "<|im_start|>assistant\n" + CALL + "<|im_end|>"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == "assistant\n" + CALL
    # One digit per token, so arithmetic is spelled out.
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("x = 1234567890")["input_ids"])
    assert [t for t in tokens if any(ch.isdigit() for ch in t)] == list("1234567890")
    # Byte-level: any (NFC) text round-trips exactly, including text the corpus never saw.
    samples = ("Größe: 3,5 µm ± 0.1", "中文 数学 ∫₀¹ x² dx = ⅓", "tabs\tand\n\nnewlines  ", "emoji 🚀🧪", "<tool_call")
    for sample in samples:
        assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample


def test_in_memory_tokenizer_equals_loaded(tokenizer) -> None:
    built = models.train_tiny_tokenizer(CORPUS).tokenizer
    assert built.get_vocab() == tokenizer.get_vocab()
    for sample in CORPUS + [render(tokenizer, CONVERSATION, tools=TOOLS)]:
        assert built(sample)["input_ids"] == tokenizer(sample)["input_ids"]


def test_build_is_deterministic_and_leaves_global_rng_alone(tmp_path: Path, tiny_dir: Path) -> None:
    before = torch.get_rng_state()
    again = build_tiny_model(tmp_path / "again", CORPUS, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    other_seed = build_tiny_model(tmp_path / "seed1", CORPUS, seed=1)
    assert (again / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()
    first, second, third = (load_file(p / "model.safetensors") for p in (tiny_dir, again, other_seed))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["model.embed_tokens.weight"], third["model.embed_tokens.weight"])
    # A different corpus gives a different tokenizer (the corpus really reaches training).
    other_corpus = build_tiny_model(tmp_path / "corpus", ["zebra quokka " * 50] * 20, seed=0)
    assert json.loads((other_corpus / "tokenizer.json").read_text())["model"]["vocab"] != json.loads(
        (tiny_dir / "tokenizer.json").read_text()
    )["model"]["vocab"]


def test_build_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown Qwen2Config field"):
        build_tiny_model(tmp_path / "a", CORPUS, hiden_size=64)
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(tmp_path / "b", CORPUS, hidden_size=129)
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model(tmp_path / "c", CORPUS, vocab_size=100)
    with pytest.raises(TypeError, match="iterable of strings"):
        build_tiny_model(tmp_path / "d", "one string")
    with pytest.raises(TypeError, match="must hold strings"):
        build_tiny_model(tmp_path / "e", ["ok", 3])
    assert not any(tmp_path.iterdir()), "failed builds must leave nothing behind"


def test_arch_overrides_reach_the_config(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "small", CORPUS, num_hidden_layers=2, intermediate_size=256)
    config = AutoModelForCausalLM.from_pretrained(folder).config
    assert (config.num_hidden_layers, config.intermediate_size, config.hidden_size) == (2, 256, 128)


# ----------------------------------------------------------------------------------------- template


def test_template_renders_tools_and_tool_turns(tokenizer) -> None:
    text = render(tokenizer, CONVERSATION, tools=TOOLS)
    assert text.startswith("<|im_start|>system\nSolve the task. Put the answer in \\boxed{}.\n\n# Tools\n")
    tools_block = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert [json.loads(line) for line in tools_block.split("\n")] == TOOLS
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in text
    # Assistant content is verbatim, tool messages share one user turn of <tool_response> blocks.
    assert "<|im_start|>assistant\nI will use the calculator.\n" + CALL + "<|im_end|>\n" in text
    assert (
        '<|im_start|>user\n<tool_response>\n{"result": "391"}\n</tool_response>\n'
        '<tool_response>\n{"note": "exact"}\n</tool_response><|im_end|>\n'
    ) in text
    assert text.count("<|im_start|>") == 7  # system, user, assistant, tool turn, assistant, user, assistant
    assert render(tokenizer, CONVERSATION[:2], add_generation_prompt=True).endswith(
        "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_has_no_default_system_and_no_randomness(tokenizer) -> None:
    user = [{"role": "user", "content": "hi"}]
    assert render(tokenizer, user) == "<|im_start|>user\nhi<|im_end|>\n"
    assert render(tokenizer, user, tools=TOOLS).startswith("<|im_start|>system\n# Tools\n")
    assert render(tokenizer, CONVERSATION, tools=TOOLS) == render(tokenizer, CONVERSATION, tools=TOOLS)


def test_template_renders_openai_tool_calls_only_without_inline_calls(tokenizer) -> None:
    openai_call = {"type": "function", "function": {"name": "lookup", "arguments": '{"query": "c"}'}}
    bare = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [openai_call]}]
    assert render(tokenizer, bare).endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "lookup", "arguments": {"query": "c"}}\n</tool_call><|im_end|>\n'
    )
    inline = [{"role": "user", "content": "q"}, {"role": "assistant", "content": CALL, "tool_calls": [openai_call]}]
    assert render(tokenizer, inline).count("<tool_call>") == 1


def test_template_rejects_unknown_roles(tokenizer) -> None:
    with pytest.raises(Exception, match="Unknown message role"):
        render(tokenizer, [{"role": "narrator", "content": "x"}])


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["no-tools", "tools"])
def test_template_is_prefix_stable(tokenizer, tools) -> None:
    full = render(tokenizer, CONVERSATION, tools=tools)
    full_ids = tokenizer(full)["input_ids"]
    for k in range(1, len(CONVERSATION)):
        inside_tool_run = CONVERSATION[k - 1]["role"] == "tool" and CONVERSATION[k]["role"] == "tool"
        if not inside_tool_run:
            prefix = render(tokenizer, CONVERSATION[:k], tools=tools)
            assert full.startswith(prefix), k
            # At these boundaries (after "<|im_end|>\n") the token ids are a prefix too, so the rollout can
            # tokenize only the new suffix.
            assert full_ids[: len(tokenizer(prefix)["input_ids"])] == tokenizer(prefix)["input_ids"], k
        if CONVERSATION[k]["role"] == "assistant":
            assert full.startswith(render(tokenizer, CONVERSATION[:k], tools=tools, add_generation_prompt=True)), k


# ----------------------------------------------------------------------------------------- cache + resolution


def test_resolve_tiny_needs_a_build(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(ModelNotBuiltError, match="amrsd-train sft"):
        resolve_model("tiny", cache_dir=tmp_path)
    calls = []

    def corpus_fn():
        calls.append(1)
        return CORPUS

    built = resolve_model("tiny", cache_dir=tmp_path, corpus_fn=corpus_fn)
    assert built == tmp_path / "tiny" and is_model_dir(built) and calls == [1]
    assert resolve_model("tiny", cache_dir=tmp_path, corpus_fn=corpus_fn) == built and calls == [1]  # cached
    assert (built / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_resolve_uses_amrsd_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMRSD_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path / "models"
    assert models.tiny_model_dir() == tmp_path / "models" / "tiny"
    with pytest.raises(ModelNotBuiltError, match=str(tmp_path / "models" / "tiny")):
        resolve_model("tiny")


def test_resolve_paths_and_unknown_names(tmp_path: Path, tiny_dir: Path) -> None:
    assert resolve_model(str(tiny_dir)) == tiny_dir
    assert resolve_model(tiny_dir) == tiny_dir
    with pytest.raises(ValueError, match="not a saved model"):
        resolve_model(tmp_path)
    with pytest.raises(ValueError) as err:
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct", cache_dir=tmp_path)
    assert all(name in str(err.value) for name in EMBEDDED_MODELS) and "not available" in str(err.value)
    (tmp_path / "tiny").mkdir()  # a half folder left by something else is reported, not loaded
    with pytest.raises(ValueError, match="not a complete model folder"):
        resolve_model("tiny", cache_dir=tmp_path, corpus_fn=lambda: CORPUS)


def test_atomic_output_dir(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed mid-write")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(final) as tmp:
        (tmp / "v1").write_text("1")
    assert (final / "v1").read_text() == "1"
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_output_dir(final):
        pass
    with atomic_output_dir(final, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------------------- smollm2


@pytest.mark.slow
def test_smollm2_converts_once_and_generates(tmp_path: Path) -> None:
    try:
        models.smollm2_gguf_path()
    except ModelNotBuiltError as err:
        pytest.skip(str(err))
    from amrsd_train.engines import SamplingParams, make_engine

    folder = resolve_model("smollm2-135m", cache_dir=tmp_path)
    assert folder == tmp_path / "smollm2-135m" and is_model_dir(folder)
    assert read_metadata(folder).source.endswith(".gguf")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m", cache_dir=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # cached: not converted again

    engine = make_engine("hf", model=folder)
    config = engine.model.config
    assert config.hidden_size // config.num_attention_heads == 64
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    tokenizer = engine.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert "<tools>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt)["input_ids"]
    [[completion]] = engine.generate([ids], SamplingParams(temperature=0.0, max_new_tokens=8))
    assert 1 <= len(completion.token_ids) <= 8 and completion.text.strip()
    scored = engine.score([ids + completion.token_ids])[0][len(ids) :]
    assert torch.allclose(scored, torch.tensor(completion.logprobs), atol=1e-3)
    # A pretrained instruct model is confident in its own greedy answer; random weights would not be.
    assert sum(completion.logprobs) / len(completion.logprobs) > -3.0


def test_compact_template_lists_signatures_and_keeps_the_turn_layout():
    tools = [{"type": "function", "function": {"name": "calculator", "description": "d" * 500,
              "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}]
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "<tool_call>\n{}\n</tool_call>"}, {"role": "tool", "content": "7"}]
    full = models.render_chat(msgs, tools)
    compact = models.render_chat(msgs, tools, style="compact")
    assert "calculator(expression)" in compact and "d" * 500 not in compact and "d" * 500 in full
    # identical from the end of the system turn on
    assert full[full.index("<|im_start|>user"):] == compact[compact.index("<|im_start|>user"):]
    with pytest.raises(ValueError, match="compact"):
        models.chat_template("tiny")
