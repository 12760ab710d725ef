"""Query-prompt SFT examples: the length query as the user turn, the label as the answer, loss on the answer only."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lengthpred.predictor import length_query

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label value that the cross-entropy loss skips (prompt positions, padding)."""


@dataclass(frozen=True)
class SftExample:
    """One tokenized training example."""

    input_ids: list[int]
    labels: list[int]
    """input_ids with every position outside the answer set to IGNORE_INDEX."""

    def __len__(self) -> int:
        return len(self.input_ids)


def query_messages(prompt: str) -> list[dict[str, str]]:
    """The chat the predictor sees: one user turn holding the instruction and the paper's length query."""
    return [{"role": "user", "content": length_query(prompt)}]


def _template_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool
) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
        )
    )


def query_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of the length query with the generation prompt (what HFEngine.encode(length_query(p)) gives)."""
    if tokenizer.chat_template is None:  # HFEngine's plain-text fallback for models without a chat template
        return list(tokenizer(length_query(prompt) + "\n", add_special_tokens=True)["input_ids"])
    return _template_ids(tokenizer, query_messages(prompt), generation_prompt=True)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Tokens that close the assistant's turn (EOS and the template's end-of-turn token)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "</s>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids


def build_example(tokenizer: PreTrainedTokenizerBase, prompt: str, target: int) -> SftExample:
    """Tokenize one (instruction, length) pair with the chat template; only the answer and its end-of-turn learn."""
    prompt_ids = query_ids(tokenizer, prompt)
    if tokenizer.chat_template is None:
        answer_ids = [*list(tokenizer(str(int(target)), add_special_tokens=False)["input_ids"]), tokenizer.eos_token_id]
        return SftExample(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)
    answer_turn = {"role": "assistant", "content": str(int(target))}
    full_ids = _template_ids(tokenizer, [*query_messages(prompt), answer_turn], generation_prompt=False)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "the chat template renders the prompt differently with and without the answer; "
            "cannot tell the answer tokens apart"
        )
    answer = full_ids[len(prompt_ids) :]
    stops = end_of_turn_ids(tokenizer)
    # Keep the answer up to its end-of-turn token; what follows it (ChatML's newline) is formatting, not answer.
    end = next((position + 1 for position, token in enumerate(answer) if token in stops), len(answer))
    kept = full_ids[: len(prompt_ids) + end]
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer[:end]
    return SftExample(input_ids=kept, labels=labels)


def build_examples(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[int]
) -> list[SftExample]:
    """Tokenize a dataset of (instruction, length) pairs."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    return [build_example(tokenizer, prompt, target) for prompt, target in zip(prompts, targets, strict=True)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50) -> list[list[int]]:
    """Batches of indices with similar lengths (little padding), in a seeded random order.

    Indices are shuffled, cut into mega-batches of `mega` batches, sorted by length inside each, then cut into
    batches whose order is shuffled again, so an epoch still mixes short and long examples.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * mega
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda index: lengths[index], reverse=True)
        batches.extend(chunk[offset : offset + batch_size] for offset in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: Iterable[SftExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask and labels (padding ignored by the loss)."""
    import torch

    examples = list(examples)
    width = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def describe(example: SftExample, tokenizer: Any) -> str:
    """The example's text with the trained span in [[...]] (for logs and debugging)."""
    trained = [token for token, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    head = example.input_ids[: len(example.input_ids) - len(trained)]
    return tokenizer.decode(head) + "[[" + tokenizer.decode(trained) + "]]"
