"""``TrainConfig``: every knob of a training run, documented once, validated at load.

Load from YAML (``TrainConfig.from_yaml(path)``), override with ``key=value`` strings (``with_overrides``; nested
keys with dots, values parsed as YAML: ``lr=3e-5``, ``families=[tooluse.calc_*]``). Unknown keys are rejected with
the closest valid name, before any model is loaded.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SFTConfig(BaseModel):
    """Warm-start settings (the ``warm_start:`` block of a training config, or ``amrsd-train sft``'s config)."""

    model_config = ConfigDict(extra="forbid")

    envs: list[str] = Field(default_factory=lambda: ["AMRSD-ToolUse-v0"], description="Env ids to take demos from.")
    families: list[str] | None = Field(None, description="Family ids or globs (None: every family of the envs).")
    demos_per_family: int = Field(200, ge=1, description="Oracle demonstrations per family (train split).")
    reflection_demos_per_family: int = Field(
        0, ge=0, description="Reflection examples per family: a diagnosis of real attempts (the oracle's and "
        "deliberately broken ones, run through the env and verifier) in, a vetted Socratic hint about the broken "
        "step out. Without them the policy cannot write a hint AMR-SD can use."
    )
    hint_demos_per_family: int = Field(
        0, ge=0, description="Hint-conditioned solutions per family: the oracle episode with a vetted hint appended "
        "to the prompt through the teacher template (and as many with the null hint), so the teacher reads hints."
    )
    reflection_steps: int = Field(
        0, ge=0, description="Second phase, after the solving warm start stops: this many steps on the reflection "
        "examples and hint-conditioned solutions (each batch one kind). Mixed into the first phase instead, they "
        "kept the tiny model on its copying plateau past 560 steps (the first phase alone leaves it in ~200-350)."
    )
    reflection_lr: float = Field(
        3e-4, gt=0, description="Peak lr of the second phase (after 10 warm-up steps, with a fresh optimizer). At the "
        "first phase's 7e-4 without warm-up it wiped out the copying the first phase had just learnt (held-out pass@1 "
        "0 afterwards); the plain demonstrations stay in its solving batches for the same reason."
    )
    steps: int = Field(150, ge=1, description="Optimizer steps (at most, with `stop_at_loss`). Kept small on purpose: "
                       "RL needs headroom.")
    stop_at_loss: float | None = Field(
        None, gt=0, description="Stop early once the mean loss of the last 20 steps is at or below this (None: run "
        "all `steps`)."
    )
    batch_size: int = Field(16, ge=1, description="Demonstrations per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak AdamW lr (after warm-up).")
    lr_schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="After warm-up: `cosine` decays to 10% of `lr` over `steps`; `constant` holds `lr`."
    )
    warmup_steps: int = Field(10, ge=0, description="Linear lr warm-up steps.")
    max_len: int = Field(768, ge=16, description="Demonstrations longer than this many tokens are dropped.")
    vocab_size: int = Field(3072, ge=300, description="BPE vocabulary of the tiny tokenizer.")
    seed: int = Field(0, description="Seeds the tiny build (tokenizer, initial weights), demo order and batches.")
    output: str | None = Field(None, description="Where to save (None: the embedded `tiny` cache folder).")
    init: Literal["build_tiny", "from_model"] = Field(
        "build_tiny", description="`build_tiny`: build a fresh tiny model; `from_model`: fine-tune `model`."
    )
    model: str | None = Field(None, description="With init=from_model: the model name or folder to fine-tune.")
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads; None keeps torch's default.")
    progress: bool = Field(True, description="Show a progress bar.")
    use_shipped: bool = Field(
        True, description="Load the warm start shipped with the package (`amrsd_train/warm_starts/`) when one was "
        "built from exactly these settings and the built-in tasks, instead of building it here (tens of minutes on "
        "2 cores). false always builds (and caches) it; the result is the same model up to float rounding."
    )

    @model_validator(mode="after")
    def _reflection_phase(self) -> "SFTConfig":
        if (self.reflection_demos_per_family or self.hint_demos_per_family) and not self.reflection_steps:
            raise ValueError("reflection_demos_per_family / hint_demos_per_family are trained in the second phase: "
                             "set reflection_steps > 0 (e.g. 100)")
        return self


class ReflectionConfig(BaseModel):
    """Meta-reflection between episodes (the ``reflection:`` block): diagnose, distill a hint, vet it."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["model", "raw"] = Field(
        "model", description="`model`: the current policy writes a Socratic `<hint>` from the diagnosis (AMR-SD); "
        "`raw`: ablation 'no reflection': the teacher context is the raw diagnosis material (reference, else a "
        "successful peer), unvetted, as over-conditioned self-distillation uses it."
    )
    granularity: Literal["group", "rollout"] = Field(
        "group", description="`group`: one hint per task group; `rollout`: one critique per attempt."
    )
    hint_max_tokens: int = Field(96, ge=8, description="Most tokens the policy may spend on one hint.")
    max_questions: int = Field(3, ge=1, description="A hint holds at most this many Socratic questions/critiques.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of hint generation.")
    resamples: int = Field(1, ge=0, description="Extra tries when the leak filter rejects a hint; then no hint.")
    prompts_dir: str | None = Field(
        None, description="Folder with `reflect_group.txt`, `reflect_rollout.txt` and `teacher_context.txt` to use "
        "instead of the shipped templates (amrsd_train/prompts/)."
    )
    skip_solved_groups: bool = Field(
        True, description="No hint for groups with no learning signal (all attempts equal): their advantages are 0, "
        "so CIG could not change them; saves the generation."
    )


class AMRSDConfig(BaseModel):
    """CIG gate and annealing of ``algorithm: amrsd`` (the ``amrsd:`` block)."""

    model_config = ConfigDict(extra="forbid")

    beta_max: float = Field(1.0, ge=0, description="Peak modulation strength beta of A_hat = A (1 + beta g).")
    beta_warmup_steps: int = Field(0, ge=0, description="Linear warm-up of beta from 0.")
    beta_hold_steps: int = Field(0, ge=0, description="Steps beta stays at beta_max after warm-up.")
    end_frac: float = Field(0.6, gt=0, le=1, description="Fraction of training where beta reaches beta_min.")
    beta_min: float = Field(0.0, ge=0, description="beta after end_frac (0: plain GRPO from then on).")
    anneal: bool = Field(True, description="False: ablation 'no annealing', beta = beta_max throughout.")
    tau_pos: float = Field(0.5, ge=0, description="Gate threshold for A > 0 (CIG above it opens the gate).")
    tau_neg: float = Field(1.0, ge=0, description="Gate threshold for A < 0 (CIG below -tau_neg opens it).")
    symmetric_gate: bool = Field(False, description="Ablation: tau_neg = tau_pos (one threshold for both signs).")
    g_max: float = Field(2.0, gt=0, description="Cap on the gate g.")
    cig_clip: float = Field(5.0, gt=0, description="C: CIG is clamped to [-C, C].")
    cig_baseline: Literal["null_hint", "student"] = Field(
        "null_hint", description="`null_hint`: CIG = teacher(x + h) - teacher(x + '(none)'); `student`: teacher(x + h) "
        "minus the rollout's own log-probs (one forward fewer)."
    )
    turn_gate: Literal["token", "turn", "max"] = Field("token", description="Token gates, turn gates or their max.")
    turn_tau_scale: float = Field(0.5, gt=0, le=1, description="Turn gates use tau times this.")
    gate_answer_spans: bool = Field(
        False, description="Let the gate open on answer spans (boxed answer, tool-call argument values). False (the "
        "definition) keeps the hint from crediting the answer tokens themselves."
    )


class TeacherConfig(BaseModel):
    """The self-teacher that scores trajectories under privileged context (the ``teacher:`` block)."""

    model_config = ConfigDict(extra="forbid")

    sync_every: int = Field(10, ge=1, description="Refresh the frozen teacher snapshot from the policy every N steps.")
    ema: float | None = Field(
        None, gt=0, lt=1, description="Instead of snapshots: teacher <- ema * teacher + (1 - ema) * policy each step."
    )


class RawSDConfig(BaseModel):
    """``algorithm: raw_sd``: SDPO-style logit distillation toward a teacher shown the raw reference or a peer."""

    model_config = ConfigDict(extra="forbid")

    topk: int = Field(20, ge=1, description="Distil on the student's top-k tokens plus one tail bucket.")
    alpha: float = Field(0.5, ge=0, le=1, description="Divergence interpolation: 0 forward KL, 1 reverse KL, "
                         "0.5 Jensen-Shannon.")
    distill_coef: float = Field(1.0, ge=0, description="Weight of the distillation term.")
    pg_coef: float = Field(1.0, ge=0, description="Weight of the GRPO policy-gradient term (0: distillation only).")


class RLSDConfig(BaseModel):
    """``algorithm: rlsd``: A_hat = A ((1 - lambda) + lambda w), w = clip(exp(sign(A) delta), 1 +- eps)."""

    model_config = ConfigDict(extra="forbid")

    eps: float = Field(0.2, gt=0, lt=1, description="Clip half-width of the teacher weight.")
    lambda_start: float = Field(1.0, ge=0, le=1, description="Mixing weight at step 0; decays linearly.")
    lambda_end: float = Field(0.0, ge=0, le=1, description="Mixing weight at the last step.")


class BaselinesConfig(BaseModel):
    """``gcpo`` and ``entropy_realloc`` (cheap token-credit baselines)."""

    model_config = ConfigDict(extra="forbid")

    gcpo_prompt: str = Field(
        "Give a wrong final answer on purpose.", description="Counterfactual instruction appended to the task for gcpo."
    )
    weight_floor: float = Field(0.1, gt=0, le=1, description="Smallest token weight before renormalising to mean 1.")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- model & engine ------------------------------------------------------------------------------------------
    model: str = Field("tiny", description="Embedded model name (`tiny`, `smollm2-135m`) or a local HF model folder.")
    engine: str = Field(
        "hf", description="Generation/scoring backend, a name of amrsd_train.engines (`hf` = transformers in this "
        "process, CPU or GPU)."
    )
    device: str = Field("cpu", description="Torch device of the trainer (and of the hf engine).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Training dtype.")
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads; None keeps torch's default.")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Under `torchrun --nproc_per_node N`: how the update is parallelised. `ddp` "
        "(DistributedDataParallel; gloo on CPU, NCCL on CUDA); `fsdp` (FullyShardedDataParallel, CUDA only, wired "
        "but not tested here: generation and scoring gather the full model). Ignored in one process. "
        "`tasks_per_step` must be a multiple of the world size."
    )

    warm_start: SFTConfig = Field(
        default_factory=SFTConfig,
        description="When model is `tiny` and not built yet: build it and SFT it on oracle demos first.",
    )

    # -- tasks -----------------------------------------------------------------------------------------------------
    envs: list[str] = Field(default_factory=lambda: ["AMRSD-ToolUse-v0"], description="Env ids to train on.")
    families: list[str] | None = Field(None, description="Family ids or globs to keep (None: all of the envs).")
    tasks_dir: str | None = Field(None, description="Tasks directory (None: the built-in tasks/).")
    difficulty: int | None = Field(None, ge=1, description="Difficulty level for every family (None: defaults).")
    max_turns: int | None = Field(None, ge=1, description="Override every family's max_turns.")
    sandbox_backend: Literal["local", "docker"] = Field(
        "local", description="Sandbox of the `python` tool: one for all of the run's envs, started on the first call."
    )

    # -- algorithm ------------------------------------------------------------------------------------------------
    algorithm: str = Field(
        "amrsd", description="How a verified batch becomes token advantages (and extra loss terms): `amrsd` "
        "(reflection hints, CIG gate, annealing), `grpo`, and the baselines `raw_sd`, `rlsd`, `gcpo`, "
        "`entropy_realloc`; any name registered in `amrsd_train.algorithms.ALGORITHMS`."
    )
    adv_estimator: Literal["grpo", "dr_grpo"] = Field(
        "grpo", description="Sequence advantage A_i: `grpo` (r-mean)/(std+eps), `dr_grpo` r-mean (Dr. GRPO)."
    )
    group_size: int = Field(8, ge=1, description="G: episodes per task instance (one GRPO group).")
    tasks_per_step: int = Field(4, ge=1, description="Task instances per step; the batch is tasks_per_step * G.")
    adv_eps: float = Field(1e-6, gt=0, description="eps of the advantage normalisation.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each batch.")
    mini_batches: int = Field(1, ge=1, description="Optimizer steps per epoch (the batch is split into this many).")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward (gradient accumulation).")
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio lower clip eps (ratio >= 1 - clip_low).")
    clip_high: float = Field(0.2, ge=0, description="PPO ratio upper clip eps (DAPO clip-higher uses e.g. 0.28).")
    dual_clip: float | None = Field(3.0, gt=1, description="Dual-clip c for negative advantages; None disables.")
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="How per-token losses are reduced to a scalar."
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty coefficient to a frozen reference model (0 = none).")
    kl_kind: Literal["k1", "k2", "k3", "low_var_kl"] = Field("k3", description="KL estimator.")
    reflection: ReflectionConfig = Field(default_factory=ReflectionConfig, description="Meta-reflection hints.")
    amrsd: AMRSDConfig = Field(default_factory=AMRSDConfig, description="CIG gate and annealing (algorithm: amrsd).")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="The self-teacher snapshot.")
    raw_sd: RawSDConfig = Field(default_factory=RawSDConfig, description="algorithm: raw_sd.")
    rlsd: RLSDConfig = Field(default_factory=RLSDConfig, description="algorithm: rlsd.")
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig, description="algorithms gcpo, entropy_realloc.")
    inspect_groups: int = Field(
        2, ge=0, description="Task groups per logged step kept for `amrsd-train inspect` (tokens, A_hat, CIG, hints)."
    )
    recompute_old_logprobs: bool = Field(
        True, description="Score rollouts once with the policy before the update (else use sampling logprobs)."
    )

    # -- optimisation ---------------------------------------------------------------------------------------------
    total_steps: int = Field(40, ge=1, description="Training steps (one rollout batch each).")
    lr: float = Field(1e-5, gt=0, description="Peak AdamW learning rate.")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Decay after warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (beta1, beta2).")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip.")

    # -- sampling -------------------------------------------------------------------------------------------------
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for rollouts (1.0 = off).")
    max_new_tokens: int = Field(128, ge=1, description="Tokens per assistant turn.")
    max_total_tokens: int = Field(1024, ge=16, description="Episode length cap (prompt + all turns); truncates.")
    stop_strings: list[Annotated[str, Field(min_length=1)]] = Field(
        ["</tool_call>"], description="An assistant turn ends at the first of these (kept in the turn), in training "
        "and evaluation. The default ends a turn at its first tool call, so the env runs it and the model reads the "
        "result before it goes on; `[]` lets one message carry several calls (BFCL's parallel families), ending the "
        "turn at EOS or `max_new_tokens`."
    )

    # -- evaluation, logging, checkpoints ----------------------------------------------------------------------------
    eval_every: int = Field(10, ge=0, description="Evaluate on the test split every N steps (0 = only start/end).")
    eval_tasks: int = Field(64, ge=1, description="Held-out tasks per evaluation.")
    eval_k: int = Field(1, ge=1, description="k of pass@k at evaluation (k samples per task at eval_temperature).")
    eval_temperature: float = Field(0.0, ge=0, description="0 = greedy (pass@1 only makes sense with eval_k=1).")
    output_dir: str = Field("runs/default", description="Where metrics, plots and checkpoints go.")
    checkpoint_every: int = Field(10, ge=0, description="Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    resume: Literal["auto", "never"] | str = Field(
        "auto", description="`auto`: continue from the latest checkpoint in output_dir; `never`; or a checkpoint path."
    )
    resume_allow_changes: list[str] = Field(
        default_factory=list,
        description="Config fields (dotted, e.g. `total_steps`, `amrsd.beta_max`) that may differ from the checkpoint's "
        "config on resume. Any other change is refused, because the continued run would no longer equal an "
        "uninterrupted one.",
    )
    tensorboard: bool = Field(False, description="Also write TensorBoard scalars (needs `tensorboard`).")
    peers_per_task: int = Field(16, ge=1, description="PeerBuffer bound per task id.")
    seed: int = Field(0, description="Seeds task sampling, generation and init; a run is a function of its seed.")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _cross_field(self) -> "TrainConfig":
        batch = self.tasks_per_step * self.group_size
        if batch % self.mini_batches != 0:
            raise ValueError(
                f"tasks_per_step * group_size = {batch} is not divisible by mini_batches = {self.mini_batches}; "
                "pick mini_batches that divides the batch"
            )
        if self.eval_k > 1 and self.eval_temperature == 0:
            raise ValueError("eval_k > 1 needs sampling: set eval_temperature > 0 (e.g. 1.0) or eval_k = 1")
        if self.group_size == 1:
            raise ValueError("group_size = 1 gives every GRPO advantage 0 (nothing to learn); use group_size >= 2")
        from amrsd_train.algorithms import ALGORITHMS
        from amrsd_train.engines import engine_kinds

        ALGORITHMS.get(self.algorithm)  # an unknown name raises, listing the registered ones

        if self.engine not in engine_kinds():
            close = difflib.get_close_matches(self.engine, engine_kinds(), n=1)
            raise ValueError(f"engine {self.engine!r} is not registered; valid: {', '.join(engine_kinds())}"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        if self.distributed == "fsdp" and not self.device.startswith("cuda"):
            raise ValueError(f"distributed=fsdp needs CUDA (device={self.device!r}); use distributed=ddp on cpu")
        if self.dtype != "float32" and self.device == "cpu":
            raise ValueError(f"dtype {self.dtype} on cpu is slow and lossy here; use dtype=float32 on cpu")
        return self

    # -- loading ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ValueError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: YAML syntax error: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        data = apply_overrides(data, overrides or [])
        return cls.validated(data, source=str(path))

    @classmethod
    def validated(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        return validated(cls, data, source)

    def with_overrides(self, overrides: list[str]) -> "TrainConfig":
        return self.validated(apply_overrides(self.model_dump(), overrides), source="overrides")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_overrides(
    data: dict[str, Any], overrides: list[str], schema: type[BaseModel] | None = None
) -> dict[str, Any]:
    """``["lr=3e-5", "families=[a, b]", "warm_start.steps=500"]`` applied to a config dict (values parsed as YAML).

    A dotted key sets a field of a nested section (``warm_start.lr=7e-4``); unknown keys, at any depth, are refused
    with the closest known names. ``schema`` is the config class the keys belong to (default :class:`TrainConfig`).
    """
    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        model: type[BaseModel] = schema or TrainConfig
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts):
            known = list(model.model_fields)
            if part not in known:
                close = difflib.get_close_matches(part, known, n=3)
                where = f" in section {'.'.join(parts[:depth])!r}" if depth else ""
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown config key {part!r}{where} in override {item!r}{hint}")
            if depth == len(parts) - 1:
                node[part] = yaml.safe_load(raw) if raw != "" else None
                break
            sub = model.model_fields[part].annotation
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:depth + 1])!r} is not a section")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, model = node[part], sub
    return out


def validated(schema: type[BaseModel], data: dict[str, Any], source: str = "config") -> Any:
    """``schema.model_validate(data)`` with the errors as one ValueError naming each bad key, and for an unknown
    key the closest known names of its section."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_explain(exc, source, schema)) from None


def _explain(exc: ValidationError, source: str, schema: type[BaseModel]) -> str:
    label = {TrainConfig: "training", SFTConfig: "SFT"}.get(schema, schema.__name__)
    lines = [f"invalid {label} config ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            section: Any = schema
            for part in err["loc"][:-1]:  # the model the unknown key was found in
                section = getattr(section, "model_fields", {}).get(part)
                section = section.annotation if section is not None else None
            known = list(getattr(section, "model_fields", {}))
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=3)
            msg = "unknown key" + (f"; did you mean {', '.join(close)}?" if close else "")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def config_reference_markdown() -> str:
    """The field tables for docs (generated from the Field descriptions, so they never drift): the training config,
    then each nested section (set from the command line as ``section.key=value``)."""

    def table(model: type[BaseModel], prefix: str = "") -> list[str]:
        rows = ["| key | default | description |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default
            if isinstance(default, BaseModel):
                default = "see below"
            rows.append(f"| `{prefix}{name}` | `{default}` | {field.description or ''} |")
        return rows

    out = ["## TrainConfig", "", *table(TrainConfig)]
    for name, field in TrainConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += ["", f"## `{name}` ({field.annotation.__name__})", "", field.description or "", "",
                    *table(field.annotation, prefix=f"{name}.")]
    return "\n".join(out)
