"""Zero-shot perception through the engine, number parsing and the fallback."""

from __future__ import annotations

from lengthpred.perception import PerceptionConfig, PerceptionPredictor
from lengthpred.predictor import LENGTH_QUERY, LengthPredictor, length_query, parse_length
from seqsched.engines.api import GREEDY
from seqsched.engines.hf import HFEngine
from tests.tiny_model import synthetic_prompts


def test_parse_length() -> None:
    assert parse_length("150") == 150
    assert parse_length("About 1,200 tokens.") == 1200
    assert parse_length("~85.5 tokens") == 85
    assert parse_length("no idea") is None
    assert parse_length("") is None


def test_length_query_appends_the_paper_query() -> None:
    assert length_query("Name a color. ") == f"Name a color.\n\n{LENGTH_QUERY}"


def test_perception_predictor_matches_direct_generation(tiny_engine: HFEngine) -> None:
    prompts = synthetic_prompts(5, seed=11)
    predictor = PerceptionPredictor(tiny_engine, PerceptionConfig(batch_size=2, fallback=77, max_new_tokens=6))
    assert isinstance(predictor, LengthPredictor)
    predicted = predictor.predict(prompts)
    assert len(predicted) == len(prompts)
    answers = [tiny_engine.generate([tiny_engine.encode(length_query(p))], 6, GREEDY).rows[0].text for p in prompts]
    for value, answer in zip(predicted, answers, strict=True):
        parsed = parse_length(answer)
        assert value == (77 if parsed is None else parsed)
    assert predictor.unparsed == sum(parse_length(answer) is None for answer in answers)
