"""Build a tiny Llama model and a locally trained tokenizer for unit tests: no download, seconds to build.

The model is trained for a few hundred steps on a synthetic chat corpus in which the answer's length
follows the prompt ("repeat apple 7 times" -> seven words, then <|im_end|>), so greedy answers stop at
varied lengths on EOS and length predictors have a real signal to learn. The built folder is cached
under ~/.cache/seqsched/test-models keyed by this file's hash, so later sessions load it in a second.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = ["apple", "blue", "cat", "dog", "echo", "fish", "green", "house", "ice", "jam", "kite", "lamp"]
VERBS = ["repeat", "say", "write", "list"]


def synthetic_example(rng: random.Random) -> tuple[str, str]:
    """A (prompt, answer) pair whose answer length is set by the prompt."""
    word = rng.choice(WORDS)
    count = rng.randint(1, 24)
    verb = rng.choice(VERBS)
    prompt = f"{verb} {word} {count} times"
    if rng.random() < 0.3:
        prompt = f"please {prompt} and be quick"
    return prompt, " ".join([word] * count)


def synthetic_prompts(count: int, seed: int = 0) -> list[str]:
    """Prompts drawn like the training corpus (for tests that need many prompts)."""
    rng = random.Random(seed)
    return [synthetic_example(rng)[0] for _ in range(count)]


def _train_tokenizer(texts: list[str]):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def _build(target: Path, seed: int = 0, steps: int = 300) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs = [synthetic_example(rng) for _ in range(3000)]
    chats = [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}] for prompt, answer in pairs
    ]
    texts = [prompt + " " + answer for prompt, answer in pairs] + [CHAT_TEMPLATE]
    tokenizer = _train_tokenizer(texts)
    encoded = [tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False) for chat in chats]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    batch_size = 32
    for step in range(steps):
        batch = encoded[(step * batch_size) % len(encoded) :][:batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _cache_root() -> Path:
    root = os.environ.get("SEQSCHED_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "seqsched" / "test-models"


def build_tiny_model() -> Path:
    """The tiny model folder (built once per version of this file, then cached)."""
    import torch
    import transformers

    key = hashlib.sha256(
        Path(__file__).read_bytes() + f"{torch.__version__}/{transformers.__version__}".encode()
    ).hexdigest()[:16]
    root = _cache_root()
    target = root / f"tiny-llama-{key}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    try:
        _build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
