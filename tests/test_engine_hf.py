"""The Engine protocol and the hf engine on a real tiny model: sampling/scoring consistency, stops,
seeding, batching, weight updates."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from amrsd_train.engines import Completion, Engine, SamplingParams, engine_kinds, make_engine, register_engine
from amrsd_train.engines.hf import HFEngine, filter_logits
from amrsd_train.models import build_tiny_model

CORPUS = [
    "Compute 17 * 23. Answer: \\boxed{391}",
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>',
    "The speed is the distance divided by the time.",
] * 5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("engine") / "tiny", CORPUS, seed=0, num_hidden_layers=2)


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> HFEngine:
    return HFEngine(tiny_dir, max_batch_size=8)


@pytest.fixture(scope="module")
def prompts(engine: HFEngine) -> list[list[int]]:
    """Chat prompts of different lengths, so batches need padding."""
    tok = engine.tokenizer
    conversations = [
        [{"role": "user", "content": "What is 17 * 23?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A car goes 120 km in 2 h. Speed?"}],
        [{"role": "user", "content": "Hi"}],
    ]
    return [
        tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in conversations
    ]


def greedy(max_new_tokens: int = 12, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, **kwargs)


def naive_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Reference: one unpadded forward of one sequence, logp[t] = log p(ids[t] | ids[:t]), logp[0] = 0."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return torch.cat([torch.zeros(1), logp])


# ----------------------------------------------------------------------------------------- protocol


def test_sampling_params_validation() -> None:
    params = SamplingParams(stop_token_ids=[5, 6], stop_strings=["</tool_call>"])
    assert params.stop_token_ids == (5, 6) and params.stop_strings == ("</tool_call>",)
    assert hash(params) == hash(SamplingParams(stop_token_ids=(5, 6), stop_strings=("</tool_call>",)))
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy
    bad = [
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"temperature": "hot"}, TypeError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"n": 0}, ValueError, "n must"),
        ({"n": True}, ValueError, "n must"),
        ({"stop_token_ids": (-1,)}, ValueError, "stop_token_ids"),
        ({"stop_strings": "</tool_call>"}, TypeError, "not one string"),
        ({"stop_strings": ("",)}, ValueError, "stop_strings"),
        ({"seed": 1.5}, ValueError, "seed"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            SamplingParams(**kwargs)


def test_registry(tiny_dir: Path) -> None:
    assert "hf" in engine_kinds()
    engine = make_engine("hf", model=tiny_dir)
    assert isinstance(engine, HFEngine) and isinstance(engine, Engine)
    with pytest.raises(ValueError, match=r"unknown engine kind 'vlm'; registered kinds: \[.*'hf'"):
        make_engine("vlm")
    with pytest.raises(ValueError, match="already registered"):
        register_engine("hf", HFEngine)
    with pytest.raises(ValueError, match="module:Name"):
        register_engine("broken", "no_colon_here")


def test_constructor_validation(tiny_dir: Path, engine: HFEngine) -> None:
    with pytest.raises(TypeError, match="tokenizer="):
        HFEngine(engine.model)
    with pytest.raises(ValueError, match="float32, not torch.bfloat16"):
        HFEngine(engine.model, engine.tokenizer, dtype="bfloat16")
    with pytest.raises(ValueError, match="unknown dtype"):
        HFEngine(tiny_dir, dtype="float33")
    with pytest.raises(ValueError, match="does not exist"):
        HFEngine(tiny_dir / "missing")
    with pytest.raises(ValueError, match="max_batch_size"):
        HFEngine(engine.model, engine.tokenizer, max_batch_size=0)


def test_input_validation(engine: HFEngine, prompts: list[list[int]]) -> None:
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        engine.generate([prompts[0], []], greedy())
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[engine.vocab_size]], greedy())
    with pytest.raises(TypeError, match="SamplingParams"):
        engine.generate(prompts, {"temperature": 0})
    with pytest.raises(ValueError, match="one mask per sequence"):
        engine.score(prompts, [[1] * len(prompts[0])])
    with pytest.raises(ValueError, match="entries"):
        engine.score([prompts[0]], [[1]])
    with pytest.raises(ValueError, match="only 0 and 1"):
        engine.score([prompts[0]], [[2] * len(prompts[0])])


# ----------------------------------------------------------------------------------------- generate


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, n=3, max_new_tokens=16, seed=0),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=50, n=2, max_new_tokens=16, seed=1),
        SamplingParams(temperature=0.0, max_new_tokens=16),
    ],
    ids=["t1", "tempered-filtered", "greedy"],
)
def test_generate_logprobs_equal_score(engine: HFEngine, prompts: list[list[int]], params: SamplingParams) -> None:
    """The key consistency: a completion's logprobs are the raw model's, exactly what score() returns for
    the same ids (PPO's ratio is 1 at the first step), whatever temperature / top-p / top-k sampled them."""
    results = engine.generate(prompts, params)
    assert len(results) == len(prompts) and all(len(r) == params.n for r in results)
    sequences, masks, completions = [], [], []
    for prompt, completions_of_prompt in zip(prompts, results):
        for completion in completions_of_prompt:
            assert isinstance(completion, Completion)
            assert 1 <= len(completion.token_ids) == len(completion.logprobs) <= params.max_new_tokens
            assert all(lp <= 0.0 for lp in completion.logprobs)
            sequences.append(prompt + completion.token_ids)
            masks.append([0] * len(prompt) + [1] * len(completion.token_ids))
            completions.append((len(prompt), completion))
    scores = engine.score(sequences, masks)
    for logp, (prompt_len, completion) in zip(scores, completions):
        assert logp.dtype == torch.float32 and logp.shape == (prompt_len + len(completion.token_ids),)
        assert torch.all(logp[:prompt_len] == 0.0)
        torch.testing.assert_close(logp[prompt_len:], torch.tensor(completion.logprobs), atol=1e-4, rtol=0)


def test_completion_text_is_decoded_ids(engine: HFEngine, prompts: list[list[int]]) -> None:
    for completions in engine.generate(prompts, SamplingParams(max_new_tokens=20, n=2, seed=3)):
        for c in completions:
            ids = c.token_ids[:-1] if c.finish_reason == "stop" else c.token_ids
            assert c.text == engine.tokenizer.decode(ids, skip_special_tokens=False)


def test_greedy_is_deterministic_and_argmax(engine: HFEngine, prompts: list[list[int]]) -> None:
    first = engine.generate(prompts, greedy(n=3))
    second = engine.generate(prompts, greedy(n=3))
    assert [[c.token_ids for c in r] for r in first] == [[c.token_ids for c in r] for r in second]
    assert all(r[0].token_ids == r[1].token_ids == r[2].token_ids for r in first)
    # Every greedy token is the model's argmax given its prefix.
    prompt, completion = prompts[0], first[0][0]
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt + completion.token_ids])).logits[0]
    argmax = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    assert argmax[: len(completion.token_ids)] == completion.token_ids


def test_batched_equals_unbatched(tiny_dir: Path, engine: HFEngine, prompts: list[list[int]]) -> None:
    """Left padding, position ids and the cache copy per row must not change results."""
    batched = engine.generate(prompts, greedy(16))
    single = [engine.generate([p], greedy(16))[0] for p in prompts]
    for b, s in zip(batched, single):
        assert b[0].token_ids == s[0].token_ids
        torch.testing.assert_close(torch.tensor(b[0].logprobs), torch.tensor(s[0].logprobs), atol=1e-5, rtol=0)
    # Seeded sampling is independent of how rows are grouped into micro-batches.
    params = SamplingParams(temperature=1.0, n=3, max_new_tokens=12, seed=7)
    one_row = HFEngine(engine.model, engine.tokenizer, max_batch_size=1).generate(prompts, params)
    together = engine.generate(prompts, params)
    assert [[c.token_ids for c in r] for r in one_row] == [[c.token_ids for c in r] for r in together]


def test_seeded_sampling_is_reproducible(engine: HFEngine, prompts: list[list[int]]) -> None:
    def ids(seed: int | None) -> list[list[list[int]]]:
        params = SamplingParams(temperature=1.0, n=4, max_new_tokens=12, seed=seed)
        return [[c.token_ids for c in r] for r in engine.generate(prompts, params)]

    assert ids(11) == ids(11)
    assert ids(11) != ids(12)
    assert ids(None) != ids(None)
    # The n samples of one prompt are distinct draws, not copies.
    assert len({tuple(x) for x in ids(11)[0]}) > 1


def test_top_k_one_and_tiny_top_p_are_greedy(engine: HFEngine, prompts: list[list[int]]) -> None:
    reference = [r[0].token_ids for r in engine.generate(prompts, greedy(10))]
    for params in (SamplingParams(top_k=1, max_new_tokens=10, seed=5), SamplingParams(top_p=1e-6, max_new_tokens=10)):
        assert [r[0].token_ids for r in engine.generate(prompts, params)] == reference


def test_filter_logits() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    kept = torch.isfinite(filter_logits(scores, top_k=2, top_p=1.0))
    assert kept[0].tolist() == [True, True, False, False]
    assert kept[1].sum() == 4  # ties with the k-th value are all kept, as in transformers' TopKLogitsWarper
    kept = torch.isfinite(filter_logits(scores, top_k=0, top_p=0.8))
    assert kept[0].tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept[1].sum() == 4  # 0.25 + 0.25 + 0.25 < 0.8: the fourth token is needed
    assert torch.isfinite(filter_logits(scores, top_k=0, top_p=0.01)).sum(-1).min() == 1
    assert torch.equal(filter_logits(scores, top_k=0, top_p=1.0), scores)


# ----------------------------------------------------------------------------------------- stops


def test_length_stop(engine: HFEngine, prompts: list[list[int]]) -> None:
    [[c]] = engine.generate([prompts[0]], greedy(5))
    reference = engine.generate([prompts[0]], greedy(40))[0][0].token_ids
    assert c.finish_reason == "length" and c.token_ids == reference[:5]
    # The model's context length also ends generation.
    short = HFEngine(engine.model, engine.tokenizer, max_model_len=len(prompts[0]) + 3)
    [[c]] = short.generate([prompts[0]], greedy(40))
    assert c.finish_reason == "length" and c.token_ids == reference[:3]
    with pytest.raises(ValueError, match="no room"):
        short.generate([prompts[0] + [5, 5, 5]], greedy())


def sampled(**kwargs) -> SamplingParams:
    """Seeded sampling: the random init's greedy text is degenerate (one token repeated), samples are not.
    A row's draws do not depend on its stop settings, so a stopped row is a prefix of the unstopped one."""
    return SamplingParams(temperature=1.0, max_new_tokens=30, seed=3, **kwargs)


def test_stop_token_ids_and_eos(engine: HFEngine, prompts: list[list[int]]) -> None:
    reference = engine.generate([prompts[0]], sampled())[0][0]
    ids = reference.token_ids
    if reference.finish_reason == "stop":  # the untrained model may emit EOS by chance: it must stop there
        assert ids[-1] in engine.eos_token_ids and ids[-1] not in ids[:-1]
    k = next(i for i in range(2, len(ids) - 1) if ids[i] not in ids[:i])
    [[c]] = engine.generate([prompts[0]], sampled(stop_token_ids=(ids[k],)))
    assert c.finish_reason == "stop" and c.token_ids == ids[: k + 1]
    assert c.logprobs == pytest.approx(reference.logprobs[: k + 1], abs=1e-5)
    assert c.text == engine.tokenizer.decode(ids[:k])  # the stop token is not in the text
    # EOS ids come from the tokenizer (and generation config) and always stop, without being asked.
    tokenizer = copy.deepcopy(engine.tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(ids[k])
    eos_engine = HFEngine(engine.model, tokenizer)
    assert ids[k] in eos_engine.eos_token_ids and engine.tokenizer.eos_token_id in eos_engine.eos_token_ids
    [[c]] = eos_engine.generate([prompts[0]], sampled())
    assert c.finish_reason == "stop" and c.token_ids == ids[: k + 1]


def test_stop_strings(engine: HFEngine, prompts: list[list[int]]) -> None:
    tok = engine.tokenizer
    ids = engine.generate([prompts[1]], sampled())[0][0].token_ids
    # A two-token string completed by token k that the text did not hold before (a multi-token stop string,
    # as </tool_call> is for SmolLM2).
    k, stop = next(
        (k, tok.decode(ids[k - 1 : k + 1]))
        for k in range(3, len(ids))
        if tok.decode(ids[k - 1 : k + 1]).strip() and tok.decode(ids[k - 1 : k + 1]) not in tok.decode(ids[:k])
    )
    [[c]] = engine.generate([prompts[1]], sampled(stop_strings=("never appears \x00", stop)))
    assert c.finish_reason == "stop_string"
    assert c.token_ids == ids[: k + 1]
    assert c.text == tok.decode(c.token_ids) and c.text.endswith(stop)
    # Sampled rows stop on their own: every row either hit the string at its last token or never produced it.
    params = SamplingParams(n=6, max_new_tokens=25, seed=2, stop_strings=(" ", "\n"))
    finishes = set()
    for c in engine.generate(prompts, params)[0]:
        finishes.add(c.finish_reason)
        if c.finish_reason == "stop_string":
            assert any(s in tok.decode(c.token_ids[-1:]) for s in (" ", "\n"))
            assert not any(s in tok.decode(c.token_ids[:-1]) for s in (" ", "\n"))
        else:
            assert not any(s in c.text for s in (" ", "\n"))
    assert "stop_string" in finishes


# ----------------------------------------------------------------------------------------- score


def test_score_matches_unpadded_forward(engine: HFEngine, prompts: list[list[int]]) -> None:
    sequences = [p + p[:5] for p in prompts] + [[7]]
    scores = engine.score(sequences)
    for ids, logp in zip(sequences, scores):
        torch.testing.assert_close(logp, naive_logprobs(engine.model, ids), atol=1e-5, rtol=0)
    assert scores[-1].tolist() == [0.0]
    # Masked scoring returns the same values where the mask is 1 and 0 elsewhere.
    masks = [[(t % 3 == 0) * 1 for t in range(len(ids))] for ids in sequences]
    for full, masked, mask in zip(scores, engine.score(sequences, masks), masks):
        keep = torch.tensor(mask, dtype=torch.bool)
        keep[0] = False
        torch.testing.assert_close(masked[keep], full[keep], atol=1e-5, rtol=0)
        assert torch.all(masked[~keep] == 0.0)
    # An all-zero mask computes nothing and returns zeros.
    assert all(torch.all(s == 0) for s in engine.score(sequences, [[0] * len(s) for s in sequences]))


def test_score_micro_batching(engine: HFEngine, prompts: list[list[int]]) -> None:
    sequences = [p * 2 for p in prompts] + prompts
    reference = engine.score(sequences)
    tight = HFEngine(engine.model, engine.tokenizer, max_batch_size=2, score_logits_budget=engine.vocab_size * 8)
    for a, b in zip(reference, tight.score(sequences)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- weights


def test_update_weights_from_state_dict_and_shared_module(tiny_dir: Path, prompts: list[list[int]]) -> None:
    engine = HFEngine(tiny_dir)
    trainer_model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        trainer_model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    sequence = prompts[0] + prompts[1]
    before = engine.score([sequence])[0]
    expected = naive_logprobs(trainer_model, sequence)
    assert not torch.allclose(before, expected, atol=1e-3)
    engine.update_weights(trainer_model.state_dict())
    torch.testing.assert_close(engine.score([sequence])[0], expected, atol=1e-5, rtol=0)
    # The engine copied the weights: it does not alias the trainer's tensors.
    assert engine.model.model.layers[0].mlp.down_proj.weight.data_ptr() != (
        trainer_model.model.layers[0].mlp.down_proj.weight.data_ptr()
    )
    with pytest.raises(ValueError, match="does not match"):
        engine.update_weights({"not.a.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        engine.update_weights([1, 2])

    # Shared module: the engine samples with the trainer's live weights; update_weights is a no-op.
    shared = HFEngine(trainer_model, AutoTokenizer.from_pretrained(tiny_dir))
    shared.update_weights(trainer_model)
    with torch.no_grad():
        trainer_model.model.layers[1].mlp.up_proj.weight.mul_(-1.0)
    torch.testing.assert_close(shared.score([sequence])[0], naive_logprobs(trainer_model, sequence), atol=1e-5, rtol=0)


def test_engine_restores_training_mode(tiny_dir: Path, prompts: list[list[int]]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.train()
    engine = HFEngine(model, AutoTokenizer.from_pretrained(tiny_dir))
    engine.generate(prompts[:1], greedy(3))
    assert model.training
    logp = engine.score(prompts[:1])[0]
    assert model.training and not logp.requires_grad
    # Scores can be used as constants in the trainer's autograd graph (no inference-mode tensors).
    weight = torch.ones_like(logp, requires_grad=True)
    (weight * logp).sum().backward()
    assert torch.equal(weight.grad, logp)
