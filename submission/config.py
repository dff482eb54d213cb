"""The one typed configuration of the harness, with every default documented here.

A run's config is built in three layers: the dataclass defaults below, then a
competition profile (``aimo3`` or ``aimo2``), then an optional TOML file, then
``--set section.field=value`` overrides from the command line. Every field of
every section can be overridden that way.

Allowed values are declared once, beside each default, and checked when the
config is loaded (defaults, profile, TOML and ``--set`` alike): a number field
is ``Annotated[int | float, Range(...)]`` (``ge``/``gt``/``le``/``lt``), text or
lists may carry ``NonEmpty()``, ``NoEmptyItems()``, ``Pattern(regex, looks_like)``
or ``Contains(marker)``; choices are ``Literal[...]``; booleans need nothing.
Every int and float field has a ``Range`` (``Range()`` = any number, on
purpose); ``tests/test_config_rules.py`` holds the house to that. Rules that
tie fields together are ``RELATIONS`` at the end. A value outside its rule is
a ``ConfigError`` naming the field, the value and what is allowed
(``solver.attempts = 0: must be >= 1``); an unknown name gets the nearest
known one ("did you mean").
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

# ConfigError is this module's error too: a config file or override that does not fit.
from submission.config_fields import (
    ConfigError,
    Contains,
    NoEmptyItems,
    NonEmpty,
    Pattern,
    Range,
    apply_mapping,
    check_fields,
    read_toml,
    set_field,
)

PACKAGE_DATA = Path(__file__).parent / "data"
# The engine's slow-down per extra concurrent stream, a: with n streams each decodes at
# R1 / (1 + a*(n-1)) tokens/s (fitted on an H100). The early-stop projection and the
# sim engine both default to it.
ENGINE_CONTENTION = 0.087


@dataclass
class ProfileConfig:
    """What the competition fixes: answer range, problem count, limits, gateway."""

    name: Literal["aimo3", "aimo2"] = "aimo3"
    answer_min: Annotated[int, Range(ge=0)] = 0
    answer_max: Annotated[int, Range(ge=0)] = 99_999
    # AIMO-2 problems state their own modulo; reducing out-of-range answers
    # mod (answer_max + 1) is a guess, so it is off unless asked for.
    reduce_modulo: bool = False
    problems: Annotated[int, Range(ge=1)] = 50
    # The notebook's hard GPU limit (AIMO-3: 5 h; runtimes are obfuscated by up to 30 min).
    time_limit_s: Annotated[float, Range(gt=0)] = 5 * 3600.0
    # What public kernels budget for the 50 problems, leaving room for start-up
    # and the runtime obfuscation.
    solve_budget_s: Annotated[float, Range(gt=0)] = 17_400.0
    # The gateway's limit for one predict() call after the first (AIMO-3: 9 h).
    per_call_limit_s: Annotated[float, Range(gt=0)] = 9 * 3600.0
    gateway_module: Annotated[str, NonEmpty()] = "kaggle_evaluation.aimo_3_inference_server"
    gateway_class: Annotated[str, NonEmpty()] = "AIMO3InferenceServer"
    competition_dir: Annotated[str, NonEmpty()] = (
        "/kaggle/input/ai-mathematical-olympiad-progress-prize-3"
    )
    # Kaggle accelerator for the kernel (kaggle_metadata.json machine_shape; AIMO-3: 1x H100,
    # AIMO-2: 4x L4, which the Kaggle CLI calls "NvidiaL4"; "NvidiaL4X1" is a single L4).
    machine_shape: Annotated[str, NonEmpty()] = "NvidiaH100"
    # GPUs that machine has (AIMO-3: 1 H100 80 GB; AIMO-2: 4 L4 24 GB): an engine built for
    # fewer leaves some idle (the doctor warns; docs/kaggle.md, first-push checklist).
    gpus: Annotated[int, Range(ge=1)] = 1


PROFILES: dict[str, dict[str, Any]] = {
    "aimo3": {},
    "aimo2": {
        "name": "aimo2",
        "answer_max": 999,
        "per_call_limit_s": 30 * 60.0,
        "gateway_module": "kaggle_evaluation.aimo_2_inference_server",
        "gateway_class": "AIMO2InferenceServer",
        "competition_dir": "/kaggle/input/ai-mathematical-olympiad-progress-prize-2",
        "machine_shape": "NvidiaL4",
        "gpus": 4,
    },
}


@dataclass
class HarmonyConfig:
    """The harmony family (gpt-oss through openai-harmony; submission/families/harmony.py)."""

    # The system message's "Reasoning:" setting: "low", "medium" or "high".
    reasoning_effort: Literal["low", "medium", "high"] = "high"
    # The system message's first line; "" = openai-harmony's default identity.
    model_identity: str = ""
    # The python tool's description in the system message; "" = openai-harmony's own
    # (ToolNamespaceConfig.python(), 0.0.8: a stateful Jupyter notebook that "will respond
    # with the output of the execution or time out after 120.0 seconds").
    tool_description: str = ""
    # The developer message's instructions (as the public AIMO-3 notebook tonghuikang/aimo3
    # notebook.py sends them).
    developer_instructions: str = (
        "You will solve the problem and return the final answer in \\boxed{}."
    )
    # The user message; {problem} is substituted.
    user_message: Annotated[str, Contains("{problem}")] = "{problem}"
    # The tool's reply when a call timed out or its process died (gpt-oss
    # gpt_oss/tools/python_docker/docker_tool.py: "[ERROR] " + the TimeoutError's text).
    timeout_text: Annotated[str, NonEmpty()] = (
        "[ERROR] Timed out waiting for Jupyter kernel output."
    )
    # Folder holding o200k_base.tiktoken; "" = $TIKTOKEN_ENCODINGS_BASE, else the cache folder
    # `python -m submission vocab` fills (submission/families/harmony_vocab.py).
    vocabulary_dir: str = ""


@dataclass
class PromptConfig:
    """How a problem becomes the model's prompt (NeMo-Skills conventions)."""

    # Chat template: "qwen-instruct" (empty system turn, always) or "raw" (the user text only).
    template: Literal["qwen-instruct", "raw"] = "qwen-instruct"
    # NeMo-Skills `generic/math` user message; {problem} is substituted.
    user_message: Annotated[str, Contains("{problem}")] = (
        "Solve the following math problem. Make sure to put the answer "
        "(and only answer) inside \\boxed{{}}.\n\n{problem}"
    )
    # Model family (submission/families/): "openmath" (<tool_call>...</tool_call>, NeMo-Skills'
    # output block), "tora" (```python ... ```output) or "harmony" (gpt-oss: token ids through
    # openai-harmony, the python tool; needs an engine that takes token ids). It also picks
    # the sandbox prelude. template and user_message are the text families'.
    family: Literal["openmath", "tora", "harmony"] = "openmath"
    harmony: HarmonyConfig = field(default_factory=HarmonyConfig)


@dataclass
class GenerationConfig:
    """Sampling parameters sent to the engine (NeMo-Skills' official TIR evaluation)."""

    # Generated tokens per attempt. The recipe's engine holds 32,000 tokens in all: the
    # prompt (~300) and up to 8 fed-back outputs (~300 tokens each) must fit beside these.
    max_tokens: Annotated[int, Range(ge=1)] = 28_000
    temperature: Annotated[float, Range(ge=0)] = 0.6
    top_p: Annotated[float, Range(gt=0, le=1)] = 0.95
    top_k: Annotated[int, Range(ge=0)] = 0  # 0 = off
    min_p: Annotated[float, Range(ge=0, le=1)] = 0.0
    repetition_penalty: Annotated[float, Range(gt=0)] = 1.0
    # Attempt i of a problem samples with seed base_seed + i.
    base_seed: Annotated[int, Range(ge=0)] = 0
    # Top log-probabilities per token the engine is asked for (0 = none); each attempt keeps
    # the mean entropy over them (the entropy vote, early_stop.selection = "entropy").
    top_logprobs: Annotated[int, Range(ge=0, le=20)] = 0
    stop: Annotated[tuple[str, ...], NoEmptyItems()] = ("<|im_end|>", "<|endoftext|>")


@dataclass
class TirConfig:
    """The tool-integrated-reasoning loop of one attempt."""

    max_code_calls: Annotated[int, Range(ge=0)] = 8  # NeMo-Skills default; the AIMO-2 winner used 6
    code_timeout_s: Annotated[float, Range(gt=0)] = (
        10.0  # NeMo-Skills default; the AIMO-2 winner used 2
    )
    # Characters of each output stream the model is shown (the traceback counts with
    # stdout for openmath), cut with the marker after them; see submission/tool_output.py.
    max_output_chars: Annotated[int, Range(ge=0)] = (
        1000  # NeMo-Skills default; the AIMO-2 winner fed back 200
    )
    truncation_marker: str = "<output cut>"
    # Opt-in early cut: end an attempt at a complete \boxed{} outside code and after the
    # reasoning (</think>). Off = the recipe's semantics: generate to the end, last box wins.
    stop_at_boxed: bool = False


@dataclass
class SolverConfig:
    """One problem: how many attempts, what to answer when none does."""

    attempts: Annotated[int, Range(ge=1)] = (
        16  # the default policy narrows this down on a slow engine
    )
    # Answered when no attempt produced an in-range integer, and by predict() on failure.
    fallback_answer: Annotated[int, Range(ge=0)] = 0
    # How often (s) the early-stop policy is consulted while nothing finishes.
    policy_tick_s: Annotated[float, Range(gt=0)] = 1.0
    # Longer problems are refused (fallback answer): 100k characters is far past the
    # model's 32k-token context, so such input is broken, not hard.
    max_problem_chars: Annotated[int, Range(ge=1)] = 100_000


@dataclass
class BudgetConfig:
    """Time budget across problems (used by submission.policy.budget)."""

    # Seconds kept back from the profile's solve budget for start-up surprises.
    safety_margin_s: Annotated[float, Range(ge=0)] = 600.0
    min_problem_s: Annotated[float, Range(ge=0)] = 60.0
    # Generous on purpose: on a slow engine a hard problem needs more than 900 s.
    max_problem_s: Annotated[float, Range(gt=0)] = 3600.0
    # A problem gets this many fair shares of the whole budget, plus the time saved so far ...
    base_shares: Annotated[float, Range(gt=0)] = 1.8
    # ... but at most this many equal shares of the time now left (a cap for the bank of a
    # fast run; on a slow one a wide cap lets the last problems keep a useful cut).
    stretch: Annotated[float, Range(gt=0)] = 4.0


@dataclass
class EarlyStopConfig:
    """When the vote is settled and how it is counted (policy.early_stop, policy.selection)."""

    # Stop when this many finished attempts agree ...
    agree: Annotated[int, Range(ge=1)] = 5
    # ... unless time is ample: while the running attempts are projected to reach this many
    # tokens by the deadline (all streams kept), only a leader they can't catch settles it.
    patient_tokens: Annotated[int, Range(ge=0)] = 40_000
    # Stop when the leader can no longer be caught by the attempts still running.
    stop_when_uncatchable: bool = True
    # After this fraction of the problem's budget, a lead of one vote settles it.
    late_fraction: Annotated[float, Range(ge=0, le=1)] = 0.5
    # Give up when every running attempt has decoded this many tokens without an answer.
    give_up_tokens: Annotated[int, Range(ge=1)] = 24_000
    # Cancel attempts until each one left can decode this many tokens by the deadline ...
    narrow_tokens: Annotated[int, Range(ge=0)] = 40_000
    # ... but keep at least this many running.
    min_running: Annotated[int, Range(ge=1)] = 3
    # The engine's slow-down per extra stream, for that projection.
    contention: Annotated[float, Range(ge=0)] = ENGINE_CONTENTION
    # Each vote weighs (1 + code errors) ** -error_power; 0 = plain majority.
    error_power: Annotated[float, Range(ge=0)] = 0.5
    # How votes are counted: "errors" (weighed by error_power, above) or "entropy" (each vote
    # weighs 1 / its attempt's mean entropy, the AIMO-3 anchor's logprob vote: needs
    # generation.top_logprobs > 0 and an engine that reports logprobs; docs/policy.md).
    selection: Literal["errors", "entropy"] = "errors"


@dataclass
class SandboxConfig:
    """Limits and guards of the local code sandbox (one process per session)."""

    # Per session: a memory cgroup caps all its processes together where the machine has
    # one; every process also gets this address-space limit (RLIMIT_AS -> MemoryError).
    memory_mb: Annotated[int, Range(ge=1)] = 4096
    # CPU seconds one call may use (RLIMIT_CPU, renewed before every call: a session's
    # cells may use many times this over its life; a restore's re-run cells each get it).
    cpu_time_s: Annotated[int, Range(ge=1)] = 60
    file_size_mb: Annotated[int, Range(ge=1)] = 64  # RLIMIT_FSIZE per file
    # Size of the session's private tmpfs (its /tmp, /var/tmp, /dev/shm, /run/lock and
    # working directory together) where mount namespaces work.
    disk_mb: Annotated[int, Range(ge=1)] = 1024
    open_files: Annotated[int, Range(ge=1)] = 256
    # Processes per session: a pids cgroup where there is one, and RLIMIT_NPROC per uid
    # when sessions run unprivileged.
    max_processes: Annotated[int, Range(ge=1)] = 64
    # User the session processes drop to when the harness runs as root ("" = stay root).
    unprivileged_user: str = "nobody"
    # ... each session as its own uid, leased host-wide from here (with that user's group),
    # so one session can't signal another's processes or spend their max_processes;
    # 0 = all share the user's.
    first_session_uid: Annotated[int, Range(ge=0, lt=2**32 - 1)] = 61000
    # Sessions forked and warmed ahead of need: a new session then costs no fork.
    spare_sessions: Annotated[int, Range(ge=0)] = 2
    # Warm modules imported once in the parent before sessions are forked.
    preload: Annotated[tuple[str, ...], NoEmptyItems()] = (
        "math",
        "numpy",
        "sympy",
        "itertools",
        "fractions",
        "functools",
        "collections",
    )
    # Code run once in every new session before its first cell, and again when a session
    # is restored; its output is not shown (e.g. warnings.filterwarnings('ignore')).
    session_prelude: str = ""
    # Each captured stream keeps this many characters (memory safety only: what the model
    # is shown is cut by the TIR loop's formatter); ExecResult.truncated says it happened.
    max_capture_chars: Annotated[int, Range(ge=1)] = 20000
    # A timed-out cell is interrupted (KeyboardInterrupt, as Jupyter); when that has not
    # ended it within this grace, the process is killed and the session restored.
    interrupt_grace_s: Annotated[float, Range(ge=0)] = 0.3
    # Restoring a killed or crashed session re-runs its cells that ended ok or with an error
    # (in order) within this cap; past it the state is lost (the session starts empty).
    restore_timeout_s: Annotated[float, Range(ge=0)] = 20.0
    # The restore runs in the background: the call whose session died waits for it this
    # long (to report its outcome), then returns; the session's next call waits for it.
    restore_wait_s: Annotated[float, Range(ge=0)] = 0.5
    # Harness environment variables a session may see (all others are dropped).
    environment: Annotated[tuple[str, ...], NoEmptyItems()] = (
        "PATH",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "PYTHONHASHSEED",
    )
    # Guards that need the machine's support; each is used only when it works here.
    use_cgroups: bool = True  # cgroup v1 memory + pids per session
    use_namespaces: bool = True  # private mount (tmpfs), network (no interfaces), IPC
    # A seccomp filter refusing keyrings, new namespaces, mounts, ptrace, bpf, io_uring...
    use_seccomp: bool = True


@dataclass
class ReplayEngineConfig:
    """The replay engine: recorded real generations served as if generated."""

    # JSONL transcript files (ToRA format); empty = the embedded GSM8K sample.
    transcripts: Annotated[tuple[str, ...], NoEmptyItems()] = ()
    # Streaming speed in tokens/s per stream; 0 = as fast as possible.
    tokens_per_s: Annotated[float, Range(ge=0)] = 0.0
    chunk_tokens: Annotated[int, Range(ge=1)] = 16


@dataclass
class SimEngineConfig:
    """The sim engine: synthetic attempts drawn from an attempt log, for timing work."""

    # Attempt log (CSV or parquet); empty = the embedded synthetic log
    # (submission/data/synthetic_attempts.csv, drawn by submission/synthetic_log.py).
    attempts_csv: str = ""
    # Single-stream decode rate (tokens/s); 0 = fitted from the log with code_call_s (least
    # squares of time_s on tokens and code calls, the recorded concurrency's slow-down undone).
    tokens_per_s: Annotated[float, Range(ge=0)] = 0.0
    # Seconds each code call keeps its stream off the engine; negative = fitted from the log.
    code_call_s: Annotated[float, Range()] = -1.0
    # Slow-down per extra concurrent stream: rate = R1 / (1 + a*(n-1)).
    contention: Annotated[float, Range(ge=0)] = ENGINE_CONTENTION
    # Streams at once when the log was recorded (calibrates R1; the hard50 log: 24).
    concurrency: Annotated[int, Range(ge=1)] = 24
    # Multiplies the rate: 1/3 = an engine 3x slower than the log's.
    speed: Annotated[float, Range(gt=0)] = 1.0
    # Virtual seconds per streamed chunk (the rate is re-read at every chunk).
    chunk_s: Annotated[float, Range(gt=0)] = 1.0
    # Seconds start() takes (an engine that loads slowly).
    start_delay_s: Annotated[float, Range(ge=0)] = 0.0
    # Fraction of streams that end with finish_reason "error" part-way.
    error_rate: Annotated[float, Range(ge=0, le=1)] = 0.0


@dataclass
class TrtllmEngineConfig:
    """In-process TensorRT-LLM engine (production on Kaggle)."""

    # Empty = the attached engine dataset, /kaggle/input/<kaggle.engine_slug> (set at load).
    engine_dir: str = ""
    tokenizer_dir: str = ""  # empty = engine_dir
    kv_cache_free_gpu_memory_fraction: Annotated[float, Range(gt=0, le=1)] = 0.92
    max_batch_size: Annotated[int, Range(ge=1)] = 32
    enable_block_reuse: bool = True
    # Run K attempts even when the drafter decodes greedily (identical attempts).
    allow_greedy_drafter: bool = False
    # Sequence room the prompt and fed-back code output need beyond generation.max_tokens:
    # an engine whose max_seq_len is below max_tokens + this is refused at start.
    prompt_allowance_tokens: Annotated[int, Range(ge=0)] = 1024
    # Re-hash every engine file against the manifest at start (~30 s for 15 GB);
    # off = check that each listed file is present.
    verify_hashes: bool = False
    # "auto" = the LLM API when importable, else ModelRunnerCpp; or force "llm" / "runner".
    api: Literal["auto", "llm", "runner"] = "auto"
    # Keep the LLM API's executor in this process (TLLM_WORKER_USE_SINGLE_PROCESS=1): on one
    # GPU it otherwise spawns an MPI worker process through mpi4py (docs/engines.md).
    single_process: bool = True
    # CPython (major.minor) of the Kaggle image: the offline wheelhouse is downloaded for it
    # (offline_wheels/download.py) and the preflight refuses any other interpreter.
    # TensorRT-LLM publishes wheels for 3.10 and 3.12 only; Kaggle's image is 3.12 since
    # 2025-12-12 (docs/engines.md).
    python_version: Annotated[str, Pattern(r"3\.\d+", "3.12")] = "3.12"


@dataclass
class HfEngineConfig:
    """transformers reference engine."""

    model: str = ""
    device: Annotated[str, Pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")] = (
        "auto"  # "auto" = cuda when available, else cpu
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_batch_size: Annotated[int, Range(ge=1)] = 16
    # transformers attention kernel ("eager", "sdpa", ...; "auto" = transformers' default).
    # eager decoded 2.3-2.5x faster than sdpa on an H100 (docs/engines.md); its prefill
    # holds a prompt-length-squared score matrix per head: pick "sdpa" for very long prompts.
    attn_implementation: str = "eager"
    # Prompt tokens per prefill pass (bounds the prefill's attention scores and memory).
    prefill_chunk_tokens: Annotated[int, Range(ge=1)] = 2048


@dataclass
class OpenaiEngineConfig:
    """Any OpenAI-compatible completions server (vLLM, SGLang, trtllm-serve, transformers serve)."""

    base_urls: Annotated[
        tuple[str, ...], NonEmpty(), Pattern(r"https?://\S+", "http://HOST:PORT/v1")
    ] = ("http://127.0.0.1:8000/v1",)
    model: str = ""  # empty = the first id of the server's GET /models
    # Which request fields beyond OpenAI's API the servers take (engines/openai_dialects.py):
    # "auto" = learnt from each server's GET /models `owned_by` (vllm, sglang, tensorrt_llm;
    # anything else is "plain": OpenAI's fields only, e.g. transformers serve).
    dialect: Literal["auto", "vllm", "sglang", "trtllm", "plain"] = "auto"
    api_key: str = "EMPTY"
    max_retries: Annotated[int, Range(ge=0)] = 5
    request_timeout_s: Annotated[float, Range(gt=0)] = 3600.0
    connect_timeout_s: Annotated[float, Range(gt=0)] = 10.0
    # Backoff before retry n (n = 1, 2, ...): retry_backoff_s * 2**(n-1), at most 30 s.
    retry_backoff_s: Annotated[float, Range(ge=0)] = 0.5


@dataclass
class ModelServerConfig:
    """A model server the openai engine starts as a subprocess (submission/model_server.py)."""

    # "none" = a server someone else runs (engine.openai.base_urls); else the one to start:
    # vllm (`python -m vllm.entrypoints.openai.api_server`), sglang (`-m sglang.launch_server`)
    # or transformers (`transformers serve`, the CPU stand-in the tests launch).
    kind: Literal["none", "vllm", "sglang", "transformers"] = "none"
    model: str = ""  # the weights folder (a /kaggle/input/... path moves with the tree)
    served_model_name: str = ""  # "" = the server's default (the model path)
    host: str = "127.0.0.1"
    port: Annotated[int, Range(ge=1, le=65535)] = 8000
    # Extra flags after ours; each is checked against the server's own parser's flag list
    # (submission/data/server_flags/<kind>.json) before anything starts.
    args: tuple[str, ...] = ()
    # Fraction of the GPU the server may take. The notebooks that served gpt-oss-120b on one
    # H100 used 0.94-0.96 ("any higher may not have enough for graph capture").
    gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.94
    # Sequences decoded at once; 0 = the policy's attempts per problem (solver.attempts).
    max_num_seqs: Annotated[int, Range(ge=0)] = 0
    # Seconds to wait for health (GET /health, then /v1/models); the notebooks waited 15 min.
    startup_timeout_s: Annotated[float, Range(gt=0)] = 900.0
    health_poll_s: Annotated[float, Range(gt=0)] = 1.0
    # Restarts after the server dies (at start or while serving).
    restarts: Annotated[int, Range(ge=0)] = 1
    # Read the weights once into the page cache before the server starts (the notebooks did).
    preread_weights: bool = True
    # Extra environment for the server, NAME=VALUE (TIKTOKEN_ENCODINGS_BASE is passed on
    # from ours).
    env: Annotated[tuple[str, ...], Pattern(r"[A-Za-z_][A-Za-z0-9_]*=.*", "NAME=VALUE")] = ()
    # After SIGTERM to the server's process group, seconds before SIGKILL.
    stop_grace_s: Annotated[float, Range(ge=0)] = 10.0
    # What runs instead of the kind's module: a .py file (the tests' stand-in server); it
    # gets the same flags. "" = the kind's own entry point.
    entrypoint: str = ""


@dataclass
class EngineConfig:
    kind: Literal["replay", "sim", "trtllm", "hf", "openai"] = "replay"
    replay: ReplayEngineConfig = field(default_factory=ReplayEngineConfig)
    sim: SimEngineConfig = field(default_factory=SimEngineConfig)
    trtllm: TrtllmEngineConfig = field(default_factory=TrtllmEngineConfig)
    hf: HfEngineConfig = field(default_factory=HfEngineConfig)
    openai: OpenaiEngineConfig = field(default_factory=OpenaiEngineConfig)
    # The model server the openai engine starts (kind "none": it starts none).
    server: ModelServerConfig = field(default_factory=ModelServerConfig)


@dataclass
class OutputConfig:
    """What a run leaves behind and shows while it runs."""

    # Where submission.parquet, the attempt log and the report go (a /kaggle folder on a
    # machine without /kaggle falls back to ./out, with a warning).
    out_dir: Annotated[str, NonEmpty()] = "out"
    write_report: bool = True
    # One log line per problem (k/N, answer, votes, time, elapsed and left); `replay` on
    # a terminal also draws a progress bar.
    progress: bool = True


# The owner the committed files name until a competitor gives theirs (`kaggle-metadata
# --write --id USER/SLUG`); `kaggle-metadata --check` refuses it wherever it is left.
PLACEHOLDER_OWNER = "your-kaggle-username"
# Kaggle's slugs: lowercase letters, digits and dashes (the CLI: 5-50 for a kernel's, 3-50
# for a dataset's; ours all fit the kernel's rule).
KAGGLE_SLUG = Pattern(r"[a-z0-9][a-z0-9-]{3,48}[a-z0-9]", "a-z, 0-9 and '-', 5-50 characters")
KERNEL_TITLE = Pattern(r"[ -~]{5,50}", "5-50 ASCII characters")
DATASET_TITLE = Pattern(r"[ -~]{6,50}", "6-50 ASCII characters")  # the CLI's dataset rule


@dataclass
class KaggleConfig:
    """Who pushes, and what the kernel and its two datasets are called on Kaggle: set once here.

    `python -m submission kaggle-metadata --write --id USER/SLUG [--title T]` writes the
    owner and the kernel's slug and title into the config file (submission/kaggle.toml);
    everything Kaggle-facing is made from this section: kaggle_metadata.json (id, title,
    dataset sources), the wheel dataset (offline_wheels/download.py's dataset-metadata.json),
    the engine dataset (build/pipeline.py's package stage) and the folder the kernel loads
    the engine from (/kaggle/input/<engine_slug> when engine.trtllm.engine_dir is empty).
    """

    owner: Annotated[str, Pattern(r"[A-Za-z0-9][A-Za-z0-9_-]*", "a Kaggle username")] = (
        PLACEHOLDER_OWNER
    )
    kernel_slug: Annotated[str, KAGGLE_SLUG] = "aimo-tir-harness"
    # Kaggle makes the kernel's slug from its title: the two must agree (RELATIONS).
    kernel_title: Annotated[str, KERNEL_TITLE] = "AIMO TIR Harness"
    wheels_slug: Annotated[str, KAGGLE_SLUG] = "aimo-offline-wheels"
    wheels_title: Annotated[str, DATASET_TITLE] = "AIMO submission offline wheels"
    engine_slug: Annotated[str, KAGGLE_SLUG] = "aimo-engine-openmath-14b-fp8-redrafter"
    engine_title: Annotated[str, DATASET_TITLE] = "OpenMath-Nemotron-14B FP8 ReDrafter engine"

    def dataset_id(self, slug: str) -> str:
        return f"{self.owner}/{slug}"


def kaggle_slugify(title: str) -> str:
    """What python-slugify (the Kaggle CLI's slugify) makes of an ASCII title."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@dataclass
class CollectConfig:
    """`python -m submission collect`: every attempt of every problem run to its own end."""

    # Attempts per problem (the simulator draws the Solver's K from these; the public
    # AIMO-3 logs hold 24).
    attempts: Annotated[int, Range(ge=1)] = 16
    # Attempts in flight at once, across problems: enough to keep a server's batch full
    # (an in-process engine also needs its batch size raised to match, e.g.
    # engine.hf.max_batch_size).
    concurrency: Annotated[int, Range(ge=1)] = 64
    # Wall cap per attempt (s); the token cap is generation.max_tokens. An attempt past
    # it ends with finish reason "timeout" and no answer, like the public logs' cut-off.
    attempt_timeout_s: Annotated[float, Range(gt=0)] = 3600.0
    # fsync every committed row: a row survives the machine's crash, not only the
    # process's (0.3 ms per row on the development box's disk, docs/own-model.md).
    fsync: bool = True


@dataclass
class Config:
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    tir: TirConfig = field(default_factory=TirConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    kaggle: KaggleConfig = field(default_factory=KaggleConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)


# Rules that tie fields together: (what must hold, in words, and the test of it).
RELATIONS: tuple[tuple[str, Callable[[Config], bool]], ...] = (
    (
        "profile.answer_min <= profile.answer_max",
        lambda c: c.profile.answer_min <= c.profile.answer_max,
    ),
    (
        "budget.min_problem_s <= budget.max_problem_s",
        lambda c: c.budget.min_problem_s <= c.budget.max_problem_s,
    ),
    (
        "kaggle.kernel_title slugifies to kaggle.kernel_slug (Kaggle names the kernel by it)",
        lambda c: kaggle_slugify(c.kaggle.kernel_title) == c.kaggle.kernel_slug,
    ),
)


def check_config(config: Config) -> None:
    """Every field's rule and every relation; a ConfigError listing all that break."""
    problems = check_fields(config)
    problems += [f"{what} does not hold" for what, holds in RELATIONS if not holds(config)]
    if problems:
        raise ConfigError("; ".join(problems))


# Fields that were renamed: an old name gets an error that names the new one.
RENAMED_FIELDS: dict[str, str] = {"prompt.code_tags": "prompt.family"}


def _refuse_renamed(dotted: str) -> None:
    if dotted in RENAMED_FIELDS:
        raise ConfigError(f"config field {dotted!r} was renamed to {RENAMED_FIELDS[dotted]!r}")


def load_config(
    profile: str = "aimo3",
    toml_path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
) -> Config:
    """Defaults, then the profile, then the TOML file, then `section.field=value` overrides."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    config = Config()
    apply_mapping(config.profile, PROFILES[profile], "profile")
    if toml_path is not None:
        data = read_toml(toml_path)
        for section, table in data.items():
            for key in table if isinstance(table, dict) else ():
                _refuse_renamed(f"{section}.{key}")
        apply_mapping(config, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        _refuse_renamed(key.strip())
        set_field(config, key.strip(), raw.strip())
    if not config.engine.trtllm.engine_dir:  # the attached engine dataset
        config.engine.trtllm.engine_dir = f"/kaggle/input/{config.kaggle.engine_slug}"
    check_config(config)
    return config


def as_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (for logs and reports)."""
    return dataclasses.asdict(config)


def config_toml(config: Config, always: typing.Collection[str] = ()) -> str:
    """The fields that differ from the profile's defaults, and the dotted fields `always`
    names, as TOML (JSON scalars are TOML). `load_config(profile, that file)` gives
    `config` back.
    """
    defaults = as_dict(load_config(config.profile.name))
    lines: list[str] = []

    def emit(section: str, values: dict[str, Any], base: dict[str, Any]) -> None:
        scalars = {
            k: v
            for k, v in values.items()
            if not isinstance(v, dict) and (v != base[k] or f"{section}.{k}" in always)
        }
        if scalars:
            lines.append(f"[{section}]")
            lines.extend(
                f"{key} = {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                for key, v in scalars.items()
            )
        for key, value in values.items():
            if isinstance(value, dict):
                emit(f"{section}.{key}" if section else key, value, base[key])

    emit("", as_dict(config), defaults)
    return "\n".join(lines) + "\n"


def add_config_arguments(parser: Any) -> None:
    """The config flags every command shares: --profile, --config, --set."""
    parser.add_argument("--profile", default="aimo3", choices=sorted(PROFILES))
    parser.add_argument("--config", dest="config_file", default=None, help="TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field (repeatable), e.g. --set solver.attempts=16",
    )


def config_from_args(args: Any) -> Config:
    return load_config(args.profile, args.config_file, args.overrides)
