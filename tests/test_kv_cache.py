"""The in-place KV cache: the same keys, values and logits as transformers' DynamicCache, without per-step copies."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from transformers import DynamicCache  # noqa: E402

from seqsched.engines.kv_cache import SlackLayer, join_left_padded, slack_cache, trim_front  # noqa: E402


def _states(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=generator), torch.randn(batch, 2, length, 4, generator=generator)


def test_updates_write_in_place_and_match_concatenation() -> None:
    layer = SlackLayer(reserve=3)
    keys, values = _states(2, 5, seed=0)
    expected_keys, expected_values = keys, values
    layer.update(keys, values)
    assert layer.capacity == 8, "five filled columns and three spare"
    buffer = layer.keys.untyped_storage().data_ptr()
    for step in range(12):
        new_keys, new_values = _states(2, 1, seed=step + 1)
        expected_keys = torch.cat([expected_keys, new_keys], dim=-2)
        expected_values = torch.cat([expected_values, new_values], dim=-2)
        out_keys, out_values = layer.update(new_keys, new_values)
        assert torch.equal(out_keys, expected_keys) and torch.equal(out_values, expected_values)
        if step < 3:
            assert layer.keys.untyped_storage().data_ptr() == buffer, "no copy while spare columns last"
    assert layer.capacity >= 17 and layer.get_seq_length() == 17


def test_trim_select_and_replaced_tensors() -> None:
    layer = SlackLayer(reserve=4)
    keys, values = _states(3, 6, seed=1)
    layer.update(keys, values)
    storage = layer.keys.untyped_storage().data_ptr()
    layer.trim_front(2)
    assert layer.get_seq_length() == 4 and layer.keys.untyped_storage().data_ptr() == storage, "a view, no copy"
    assert torch.equal(layer.keys, keys[..., 2:, :])
    layer.batch_select_indices(torch.tensor([0, 2]))
    assert torch.equal(layer.keys, keys[[0, 2]][..., 2:, :]) and torch.equal(layer.values, values[[0, 2]][..., 2:, :])
    # Code that sets keys/values itself (as a batch join does): the layer adopts them at its next update.
    replaced_keys, replaced_values = _states(4, 3, seed=2)
    layer.keys, layer.values = replaced_keys, replaced_values
    new_keys, new_values = _states(4, 1, seed=3)
    out_keys, out_values = layer.update(new_keys, new_values)
    assert torch.equal(out_keys, torch.cat([replaced_keys, new_keys], dim=-2))
    assert torch.equal(out_values, torch.cat([replaced_values, new_values], dim=-2))


def test_join_left_padded_aligns_rows_to_the_right() -> None:
    first, second = slack_cache(None), slack_cache(None)
    first.layers, second.layers = [SlackLayer(2)], [SlackLayer(2)]
    short, long = _states(2, 3, seed=4), _states(1, 5, seed=5)
    first.update(*short, 0)
    second.update(*long, 0)
    join_left_padded(first, second, reserve=2)
    keys = first.layers[0].keys
    assert keys.shape == (3, 2, 5, 4)
    assert torch.equal(keys[:2, :, 2:, :], short[0]) and torch.equal(keys[2:], long[0])
    assert torch.count_nonzero(keys[:2, :, :2, :]) == 0, "the padding columns are zeros"
    new = _states(3, 1, seed=6)
    out_keys, _ = first.update(*new, 0)
    assert out_keys.shape[-2] == 6 and torch.equal(out_keys[..., -1:, :], new[0])
    trim_front(first, 1)
    assert first.layers[0].get_seq_length() == 5


def test_model_logits_equal_dynamic_cache(tiny_engine) -> None:
    """A tiny Llama decoded 8 steps with either cache, rows selected and leading columns cut on the way: the
    logits agree to float rounding and the greedy tokens are the same."""
    model = tiny_engine.model
    prompts = [tiny_engine.encode(text) for text in ("a short prompt", "a somewhat longer prompt than that one")]
    input_ids, mask = tiny_engine.left_pad(prompts)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    results = []
    for cache in (DynamicCache(config=model.config), slack_cache(model.config, reserve=3)):
        step_mask, step_positions = mask, positions
        with torch.inference_mode():
            out = model(
                input_ids=input_ids,
                attention_mask=step_mask,
                position_ids=step_positions,
                use_cache=True,
                **{tiny_engine.cache_argument: cache},
            )
            logits, tokens, trace = out.logits[:, -1, :], None, []
            next_positions = step_positions[:, -1] + 1
            for step in range(8):
                tokens = logits.argmax(dim=-1)
                trace.append(logits)
                if step == 4:  # drop the short row: the long one's cache and mask stay aligned
                    keep = torch.tensor([1])
                    cache.batch_select_indices(keep)
                    tokens, step_mask, next_positions = tokens[keep], step_mask[keep], next_positions[keep]
                    unused = int(step_mask.any(dim=0).int().argmax())
                    if unused:
                        trim_front(cache, unused)
                        step_mask = step_mask[:, unused:]
                step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=-1)
                out = model(
                    input_ids=tokens.unsqueeze(-1),
                    attention_mask=step_mask,
                    position_ids=next_positions.unsqueeze(-1),
                    use_cache=True,
                    **{tiny_engine.cache_argument: cache},
                )
                logits, next_positions = out.logits[:, -1, :], next_positions + 1
        results.append(trace)
    for dynamic, slack in zip(*results, strict=True):
        assert torch.allclose(dynamic, slack, atol=1e-5)
        assert torch.equal(dynamic.argmax(dim=-1), slack.argmax(dim=-1))
