"""submission.engines.streamtext: stop strings across piece boundaries, incremental decoding."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from submission.engines.streamtext import IncrementalDecoder, StopMatcher
from submission.standin import build_qwen_tokenizer
from tests.helpers import cached

TRANSCRIPTS = Path(__file__).parents[1] / "submission" / "data" / "tora70b_gsm8k_first250.jsonl"
STOPS = ("```output", "</tool_call>", "<|im_end|>", "<|endoftext|>")


def real_texts() -> list[str]:
    lines = TRANSCRIPTS.read_text(encoding="utf-8").splitlines()[:40]
    return [json.loads(line)["code"][0] for line in lines]


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300, deadline=None)
@given(
    text=st.sampled_from(real_texts()) | st.text(alphabet="ab`<>/|output_calim", max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
    stops=st.lists(st.sampled_from((*STOPS, "ab", "b`a")), min_size=1, max_size=4, unique=True),
)
def test_stop_matcher_finds_the_earliest_stop_however_the_text_is_cut(text, cuts, stops):
    matcher = StopMatcher(tuple(stops))
    emitted, found = [], None
    for piece in split(text, cuts):
        out, found = matcher.feed(piece)
        emitted.append(out)
        if found is not None:
            break
    hits = [(text.find(s), stops.index(s), s) for s in stops if s in text]
    if hits:
        at, _, expected = min(hits)
        assert found == expected
        assert "".join(emitted) == text[:at]
    else:
        assert found is None
        assert "".join(emitted) + matcher.flush() == text


def test_stop_matcher_holds_back_only_a_possible_stop_prefix():
    matcher = StopMatcher(("</tool_call>",))
    assert matcher.feed("x = 1\n</tool") == ("x = 1\n", None)
    assert matcher.held == "</tool"
    assert matcher.feed("box") == ("</toolbox", None)  # not a stop after all: released
    assert matcher.feed("</tool_call>tail") == ("", "</tool_call>")


@pytest.fixture(scope="module")
def tokenizer(request: pytest.FixtureRequest):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    path = cached(request, "qwen25-tokenizer", build_qwen_tokenizer)
    return AutoTokenizer.from_pretrained(str(path))


@settings(max_examples=60, deadline=None)
@given(
    text=st.sampled_from(real_texts())
    | st.sampled_from(
        ["数学题：求 x² = 4 的解 😀🎉 ∑∫ é", "<tool_call>\nprint('ñ')\n</tool_call>"]
    ),
    sizes=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=50),
)
def test_incremental_decoding_equals_decoding_everything(tokenizer, text, sizes):
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoder = IncrementalDecoder(tokenizer)
    pieces, at, step = [], 0, 0
    while at < len(ids):
        size = sizes[step % len(sizes)]
        piece = decoder.add(ids[at : at + size])
        assert "\ufffd" not in piece  # never half a character
        pieces.append(piece)
        at, step = at + size, step + 1
    pieces.append(decoder.flush())
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=False)
