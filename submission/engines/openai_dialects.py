"""What each OpenAI-compatible completions server accepts beyond OpenAI's API (data, pure).

A server that does not know a request field either ignores it (vLLM and
SGLang log and drop extra fields) or refuses the request: `transformers serve`
5.25 answers 422 "Unexpected fields in the request: {...}", and trtllm-serve's
pydantic models forbid extra fields. So the openai engine sends each extension
only to a server whose dialect accepts it.

Read at pinned versions (the installed packages' own source):
- vLLM 0.11.2 (commit 275de3417), `vllm/entrypoints/openai/protocol.py`
  `CompletionRequest`: `prompt: list[int] | ... | str`, `stop_token_ids`,
  `include_stop_str_in_output`, `skip_special_tokens` (default True),
  `return_token_ids` (PR #22587: "In streaming mode ... token_ids contains the
  delta tokens for each chunk"), `top_k`, `min_p`, `repetition_penalty`;
  `CompletionResponseStreamChoice.stop_reason: int | str | None` ("the stop
  string or token id"), `token_ids`; `ModelCard.owned_by = "vllm"`.
  `vllm/v1/core/sched/utils.py` `check_stop` sets `stop_reason` to the stop
  token id, and the token stays in the output ids.
- SGLang 0.5.5, `sglang/srt/entrypoints/openai/protocol.py` `CompletionRequest`:
  token-id prompts, `stop_token_ids`, `no_stop_trim`, `skip_special_tokens`,
  `top_k`, `min_p`, `repetition_penalty`; the stream choice names the stop in
  `matched_stop` (int or str) and carries no token ids; `owned_by = "sglang"`.
- trtllm-serve (TensorRT-LLM `tensorrt_llm/serve/openai_protocol.py`, the
  stored revision; extra fields forbidden): `stop_token_ids`,
  `include_stop_str_in_output`, `skip_special_tokens`, `top_k`, `min_p`,
  `repetition_penalty`; `stop_reason`; `owned_by = "tensorrt_llm"`.
- `transformers serve` 5.25 (`transformers/cli/serving/completion.py`): the
  OpenAI fields plus `seed`; a string prompt only (400 "prompt must be a
  string."); `stop` strings are kept in the text; `logprobs` ignored;
  `owned_by = "local"` for a local model. It speaks the `plain` dialect.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["vllm", "sglang", "trtllm", "plain"]

# Request fields beyond OpenAI's completions API that each dialect accepts.
EXTENSIONS: dict[Dialect, frozenset[str]] = {
    "vllm": frozenset(
        {
            "include_stop_str_in_output",
            "skip_special_tokens",
            "stop_token_ids",
            "return_token_ids",
            "top_k",
            "min_p",
            "repetition_penalty",
            "continuous_usage_stats",
        }
    ),
    "sglang": frozenset(
        {
            "no_stop_trim",
            "skip_special_tokens",
            "stop_token_ids",
            "top_k",
            "min_p",
            "repetition_penalty",
            "continuous_usage_stats",
        }
    ),
    "trtllm": frozenset(
        {
            "include_stop_str_in_output",
            "skip_special_tokens",
            "stop_token_ids",
            "top_k",
            "min_p",
            "repetition_penalty",
            "continuous_usage_stats",
        }
    ),
    "plain": frozenset(),
}

# GET /models' `owned_by` -> dialect (vLLM, SGLang, trtllm-serve's ModelCard defaults).
OWNERS: dict[str, Dialect] = {"vllm": "vllm", "sglang": "sglang", "tensorrt_llm": "trtllm"}

# Dialects whose server takes a token-id prompt and streams the generated ids back: what a
# family that renders and parses tokens itself (harmony) needs. SGLang takes id prompts but
# streams no ids; trtllm-serve's streamed ids are not verified here.
TOKEN_DIALECTS: frozenset[Dialect] = frozenset({"vllm"})


def dialect_of(owned_by: str | None) -> Dialect:
    """The dialect a server's GET /models `owned_by` names; `plain` when unknown."""
    return OWNERS.get(owned_by or "", "plain")


def fields_named(detail: str, sent: frozenset[str]) -> frozenset[str]:
    """The extension fields a server's 4xx reason names (e.g. transformers serve's 422)."""
    return frozenset(name for name in sent if f"'{name}'" in detail or f'"{name}"' in detail)
