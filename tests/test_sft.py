"""SFT examples: the length query as the user turn, loss only on the answer and its end-of-turn token."""

from __future__ import annotations

from pathlib import Path

import pytest

from lengthpred.predictor import length_query
from lengthpred.sft import IGNORE_INDEX, build_example, collate, length_grouped_batches, query_ids
from seqsched.engines.hf import HFEngine
from seqsched.model_specs import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def test_prompt_matches_what_the_engine_asks(tokenizer, tiny_engine: HFEngine) -> None:
    prompt = "repeat apple 7 times"
    assert query_ids(tokenizer, prompt) == tiny_engine.encode(length_query(prompt))


def test_loss_only_on_the_answer_and_end_of_turn(tokenizer) -> None:
    prompt = "say blue 3 times"
    example = build_example(tokenizer, prompt, 150)
    prompt_ids = query_ids(tokenizer, prompt)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert example.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    answer = [label for label in example.labels if label != IGNORE_INDEX]
    assert answer == example.input_ids[len(prompt_ids) :]
    assert answer[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(answer[:-1]) == "150"
    # The template's newline after <|im_end|> is formatting: it is not part of the example at all.
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": length_query(prompt)}, {"role": "assistant", "content": "150"}],
        tokenize=True,
        return_dict=False,
    )
    assert len(full) == len(example.input_ids) + 1 and tokenizer.decode(full[-1:]) == "\n"


def test_plain_prompt_fallback_without_a_chat_template(tokenizer) -> None:
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    example = build_example(plain, "list cat 2 times", 50)
    answer = [label for label in example.labels if label != IGNORE_INDEX]
    assert plain.decode(answer[:-1]) == "50" and answer[-1] == plain.eos_token_id
    assert plain.decode(example.input_ids[: -len(answer)]).endswith(length_query("list cat 2 times") + "\n")


def test_collate_pads_right_and_ignores_padding(tokenizer) -> None:
    examples = [
        build_example(tokenizer, "say cat 2 times", 50),
        build_example(tokenizer, "please say dog 20 times and be quick", 400),
    ]
    batch = collate(examples, pad_token_id=0)
    short, long = sorted(range(2), key=lambda row: len(examples[row]))
    assert batch["input_ids"].shape == (2, max(len(example) for example in examples))
    assert int(batch["attention_mask"][short].sum()) == len(examples[short])
    assert (batch["labels"][short, len(examples[short]) :] == IGNORE_INDEX).all()
    assert batch["labels"][long].tolist() == examples[long].labels


def test_length_grouped_batches_cover_every_example_once() -> None:
    lengths = [(index * 37) % 101 for index in range(257)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3, mega=4)
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(257))
    assert all(len(batch) <= 8 for batch in batches)
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3, mega=4)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=4, mega=4)
    # Inside a batch lengths are close: the spread is far below the whole range's.
    spread = sum(max(lengths[i] for i in batch) - min(lengths[i] for i in batch) for batch in batches) / len(batches)
    assert spread < 30
