"""The LoRA training loop: a few steps lower the loss, checkpoints resume, the trained predictor saves and loads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lengthpred.artifact import load_saved, predictor_kind
from lengthpred.data import LengthData
from lengthpred.generative import GenerativeConfig, train_generative
from lengthpred.kinds import PredictorKind
from lengthpred.perception import PerceptionConfig, PerceptionPredictor
from lengthpred.sft import build_examples, collate
from lengthpred.train import LoraSettings, OptimSettings, latest_checkpoint, lora_config, run_training
from seqsched.model_specs import ModelConfig, load_model
from tests.tiny_model import synthetic_example


def _data(count: int, seed: int) -> LengthData:
    rng = random.Random(seed)
    pairs = [synthetic_example(rng) for _ in range(count)]
    lengths = [len(answer.split()) * 10 for _, answer in pairs]
    return LengthData("synthetic", [str(i) for i in range(count)], [p for p, _ in pairs], lengths, lengths)


def _peft_model(tiny_model_dir: Path):
    from peft import get_peft_model

    loaded = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    return get_peft_model(loaded.model, lora_config(LoraSettings(r=4, alpha=8, dropout=0.0))), loaded.tokenizer


def _mean_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(model(**batch).loss) for batch in batches) / len(batches)


def test_a_few_steps_lower_the_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = _peft_model(tiny_model_dir)
    data = _data(32, seed=5)
    examples = build_examples(tokenizer, data.prompts, data.labels)
    pad = tokenizer.pad_token_id
    batches = [collate(examples[start : start + 8], pad) for start in range(0, len(examples), 8)]
    before = _mean_loss(model, batches)
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = next(p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad)
    optim = OptimSettings(
        max_steps=8, learning_rate=5e-3, batch_size=8, grad_accum=1, warmup_ratio=0.0, save_every=0, eval_every=0
    )
    result = run_training(
        model, examples, lambda b: collate(b, pad), [len(e) for e in examples], optim, tmp_path, progress=False
    )
    after = _mean_loss(model, batches)
    assert result.steps == 8 and result.examples_seen == 64
    assert after < before * 0.8, (before, after)
    assert any(not torch.equal(p, trainable_before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert torch.equal(frozen, next(p for n, p in model.named_parameters() if not p.requires_grad))


def test_checkpoints_resume_where_training_stopped(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _data(24, seed=6)
    optim = OptimSettings(
        max_steps=4, learning_rate=1e-3, batch_size=4, grad_accum=2, save_every=2, eval_every=0, keep_checkpoints=1
    )
    model, tokenizer = _peft_model(tiny_model_dir)
    examples = build_examples(tokenizer, data.prompts, data.labels)
    pad = tokenizer.pad_token_id
    lengths = [len(e) for e in examples]
    first = run_training(model, examples, lambda b: collate(b, pad), lengths, optim, tmp_path, progress=False)
    assert first.steps == 4 and first.resumed_from == 0
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    assert (
        checkpoint is not None and checkpoint.name == "step-2"
    )  # the last step is not checkpointed; older ones pruned
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-2"]

    # A fresh model resumes from step 2 and runs the remaining two steps only.
    resumed_model, _ = _peft_model(tiny_model_dir)
    second = run_training(resumed_model, examples, lambda b: collate(b, pad), lengths, optim, tmp_path, progress=False)
    assert second.resumed_from == 2 and second.steps == 4
    assert second.examples_seen == first.examples_seen
    # Same data order and same state at step 2: the resumed run ends with the same weights.
    for (name, p), (_, q) in zip(model.named_parameters(), resumed_model.named_parameters(), strict=True):
        if p.requires_grad:
            assert torch.allclose(p, q, atol=1e-5), name


def test_train_generative_saves_a_loadable_predictor(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = GenerativeConfig(
        model=ModelConfig(spec=str(tiny_model_dir)),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        optim=OptimSettings(max_steps=3, learning_rate=1e-3, batch_size=8, grad_accum=1, eval_every=0, save_every=0),
        eval_limit=4,
        perception=PerceptionConfig(batch_size=4, max_new_tokens=4, fallback=99),
    )
    logged: list[tuple[int, dict[str, float]]] = []
    folder, result = train_generative(
        config, _data(16, 7), _data(8, 8), tmp_path, on_metrics=lambda s, m: logged.append((s, m)), progress=False
    )
    assert result.steps == 3
    assert predictor_kind(folder) is PredictorKind.LORA and (folder / "adapter" / "adapter_config.json").is_file()
    final_eval = [metrics for _, metrics in logged if "eval_loss" in metrics]
    assert final_eval and {"eval_mae", "eval_acc_100", "eval_unparsed"} <= set(final_eval[-1])
    predictor = load_saved(folder)
    assert isinstance(predictor, PerceptionPredictor)
    predicted = predictor.predict(["say cat 3 times", "repeat dog 12 times"])
    assert len(predicted) == 2 and all(isinstance(value, int) and value >= 0 for value in predicted)


@pytest.mark.parametrize("bad_steps", [0])
def test_rejects_empty_training_sets(tmp_path: Path, bad_steps: int) -> None:
    with pytest.raises(ValueError, match="no training examples"):
        run_training(torch.nn.Linear(1, 1), [], lambda b: {}, [], OptimSettings(max_steps=bad_steps), tmp_path)


def test_resume_restores_every_random_generator() -> None:
    """Python's, NumPy's and torch's generators all come back (the old checkpoints saved torch's CPU state only)."""
    import random

    import numpy as np

    from lengthpred.train import rng_state, set_rng_state

    saved = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(1)
    set_rng_state(saved)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    set_rng_state(saved["torch"])  # an older checkpoint's bare torch state still loads
    assert float(torch.rand(1)) == expected[2]
