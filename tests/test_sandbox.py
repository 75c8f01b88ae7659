"""The sandbox world, its gold scorer and the simulated annotator (no model involved)."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_widgets.sandbox import (
    ISSUES,
    SimulatedAnnotator,
    SupportPrompt,
    curt_demo,
    gold_features,
    gold_score,
    ideal_response,
    make_prompts,
    parse_prompt,
    random_response,
    sft_dataset,
)
from rlhf_widgets.sandbox.vocabulary import ACTIONS, CLAUSES
from rlhf_widgets.sandbox.world import order_split

PROMPTS = make_prompts(200, seed=1)
PROMPT = next(p for p in PROMPTS if p.tone == "neutral" and p.product)


def _mean_gold(make_response) -> float:
    return statistics.mean(gold_score(p, make_response(p)) for p in PROMPTS)


# --- world -----------------------------------------------------------------------------------------


def test_prompts_are_deterministic_and_cover_every_issue_and_tone() -> None:
    assert make_prompts(50, seed=3) == make_prompts(50, seed=3)
    assert make_prompts(50, seed=3) != make_prompts(50, seed=4)
    assert {p.issue for p in make_prompts(8)} == set(ISSUES)
    assert {p.tone for p in PROMPTS} == {"neutral", "polite", "angry"}
    assert all(p.order_id and p.order_id in p.text for p in PROMPTS)


def test_train_and_test_prompts_are_disjoint() -> None:
    train, test = make_prompts(2000, split="train"), make_prompts(500, split="test")
    assert not {p.order_id for p in train} & {p.order_id for p in test}
    assert not {p.text for p in train} & {p.text for p in test}
    assert {order_split(p.order_id) for p in test} == {"test"}
    with pytest.raises(ValueError, match="split"):
        make_prompts(1, split="validation")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.sampled_from(["train", "test"]))
def test_parse_prompt_inverts_make_prompts(seed: int, split: str) -> None:
    for prompt in make_prompts(16, seed=seed, split=split):
        assert parse_prompt(prompt.text) == prompt


def test_parse_prompt_reads_chats_and_free_text() -> None:
    chat = [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "I can't log in."},
        {"role": "assistant", "content": "Hi there!"},
        {"role": "user", "content": PROMPT.text},
    ]
    assert parse_prompt(chat) == PROMPT
    seed_example = parse_prompt("My order hasn't arrived. What should I do?")
    assert seed_example.issue == "late_delivery" and seed_example.order_id is None
    assert seed_example.tone == "neutral"
    with pytest.raises(ValueError, match="no issue"):
        parse_prompt("What is the capital of France?")


def test_sft_dataset_is_conversational_prompt_completion_with_the_right_action() -> None:
    ds = sft_dataset(32, seed=2)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 32
    assert ds[0]["prompt"][0]["role"] == "user" and ds[0]["completion"][0]["role"] == "assistant"
    assert sft_dataset(32, seed=2)[:] == ds[:]
    assert all(gold_features(row["prompt"], row["completion"])["action"] > 0 for row in ds)


def test_curt_demo_adds_an_extra_clause_only_when_asked() -> None:
    rng = random.Random(0)
    curt = [curt_demo(PROMPT, rng, extra_clause_prob=0.0) for _ in range(20)]
    actions = [a.format(order=PROMPT.order_id, product=PROMPT.product) for a in ACTIONS[PROMPT.issue]]
    assert all(r in actions for r in curt)
    fuller = [curt_demo(PROMPT, rng, extra_clause_prob=1.0) for _ in range(20)]
    assert all(sum(v > 0 for v in gold_features(PROMPT, r).values()) >= 2 for r in fuller)


def test_random_responses_mix_good_and_bad_clauses() -> None:
    rng = random.Random(0)
    features = [gold_features(p, random_response(p, rng)) for p in PROMPTS]
    for name in ("action", "greeting", "empathy", "offer", "closing", "order_number"):
        assert any(f[name] > 0 for f in features), name
    for name in ("wrong_action", "wrong_order", "rude", "repetition", "padding"):
        assert any(f[name] < 0 for f in features), name
    assert not any(f["unmatched"] for f in features)


# --- gold scorer -----------------------------------------------------------------------------------


def test_gold_orders_ideal_above_curt_above_random() -> None:
    rng = random.Random(0)
    ideal = _mean_gold(ideal_response)
    curt = _mean_gold(lambda p: curt_demo(p, rng))
    rand = _mean_gold(lambda p: random_response(p, rng))
    assert 4.5 < ideal < 5.6
    assert 2.3 < curt < 3.2
    assert rand < 0.5
    assert gold_score(PROMPT, "") < -1.0


def test_ideal_response_is_the_best_the_world_offers() -> None:
    rng = random.Random(0)
    for prompt in PROMPTS[:40]:
        best = gold_score(prompt, ideal_response(prompt))
        assert all(gold_score(prompt, random_response(prompt, rng)) <= best + 1e-9 for _ in range(20))


def test_responses_accept_prompt_text_and_prompts_without_an_order_number() -> None:
    assert ideal_response(PROMPT.text) == ideal_response(PROMPT)
    seed_example = "My order hasn't arrived. What should I do?"
    answer = ideal_response(seed_example)
    assert "#" not in answer and "#" not in curt_demo(seed_example, random.Random(0))
    features = gold_features(seed_example, answer)
    assert features["action"] > 0 and features["wrong_order"] == 0 and features["order_number"] == 0


def test_features_sum_to_the_score_and_name_the_clauses() -> None:
    rng = random.Random(0)
    for prompt in PROMPTS[:50]:
        response = random_response(prompt, rng)
        assert sum(gold_features(prompt, response).values()) == pytest.approx(gold_score(prompt, response))
    ideal = gold_features(PROMPT, ideal_response(PROMPT))
    assert ideal["action"] == 2.0 and ideal["order_number"] == 1.0 and ideal["missing_action"] == 0.0
    assert all(v >= 0 for v in ideal.values())


def test_rude_wrong_action_wrong_order_and_repetition_lower_the_score() -> None:
    ideal = ideal_response(PROMPT)
    base = gold_score(PROMPT, ideal)
    assert gold_score(PROMPT, f"{ideal} {CLAUSES['rude'][0]}") < base - 2
    wrong_issue = next(i for i in ISSUES if i != PROMPT.issue)
    wrong_action = ACTIONS[wrong_issue][0]
    assert gold_features(PROMPT, wrong_action)["wrong_action"] < 0
    assert gold_score(PROMPT, f"{ideal} {wrong_action}") < base - 1
    assert gold_score(PROMPT, ideal.replace(PROMPT.order_id, "#00001")) < base - 2
    first = ideal.split(". ")[0] + "."
    assert gold_features(PROMPT, f"{first} {ideal}")["repetition"] < 0


def test_padding_raises_length_but_lowers_gold() -> None:
    ideal = ideal_response(PROMPT)
    padded = " ".join([ideal, *CLAUSES["padding"][:3]])
    assert len(padded.split()) > len(ideal.split()) + 30
    assert gold_score(PROMPT, padded) < gold_score(PROMPT, ideal) - 1.5
    features = gold_features(PROMPT, padded)
    assert features["padding"] < 0 and features["length"] < 0


def test_empathy_matters_more_to_angry_customers() -> None:
    angry = next(p for p in PROMPTS if p.tone == "angry")
    calm = SupportPrompt(angry.text, angry.issue, angry.order_id, angry.product, "neutral")
    sorry = CLAUSES["empathy"][0]
    assert gold_features(angry, sorry)["empathy"] > gold_features(calm, sorry)["empathy"] > 0


def test_garbled_and_cut_off_sentences_cost_and_chat_markup_is_ignored() -> None:
    ideal = ideal_response(PROMPT)
    assert gold_features(PROMPT, f"{ideal} Thank order the you.")["unmatched"] < 0
    assert gold_score(PROMPT, ideal[:-5]) < gold_score(PROMPT, ideal)
    as_chat = [{"role": "assistant", "content": f"{ideal}<|end|><|user|>\nThanks!"}]
    assert gold_score(PROMPT.messages, as_chat) == gold_score(PROMPT.text, ideal)


def test_gold_is_deterministic() -> None:
    rng_a, rng_b = random.Random(7), random.Random(7)
    for prompt in PROMPTS[:30]:
        a, b = random_response(prompt, rng_a), random_response(prompt, rng_b)
        assert a == b and gold_score(prompt, a) == gold_score(prompt.text, b)


# --- simulated annotator ---------------------------------------------------------------------------


def _random_pairs(n: int = 300) -> list[tuple[SupportPrompt, str, str]]:
    rng = random.Random(0)
    pairs = [(p, random_response(p, rng), random_response(p, rng)) for p in make_prompts(n, seed=5)]
    return [(p, a, b) for p, a, b in pairs if gold_score(p, a) != gold_score(p, b)]


def test_annotator_agrees_with_gold_more_as_temperature_falls() -> None:
    pairs = _random_pairs()
    agreement = []
    for temperature in (10.0, 1.0, 0.1):
        annotator = SimulatedAnnotator(temperature=temperature, seed=0)
        agree = [(annotator(p, a, b) == "a") == (gold_score(p, a) > gold_score(p, b)) for p, a, b in pairs]
        agreement.append(statistics.mean(agree))
    assert agreement[0] < agreement[1] < agreement[2]
    assert agreement[0] < 0.7 and agreement[2] > 0.97


def test_annotator_probabilities_are_consistent() -> None:
    annotator = SimulatedAnnotator()
    p, a, b = _random_pairs(20)[0]
    assert annotator.prob_a(p, a, b) + annotator.prob_a(p, b, a) == pytest.approx(1.0)
    assert annotator.prob_a(p, a, a) == 0.5
    assert annotator.name == "simulated"
    with pytest.raises(ValueError, match="temperature"):
        SimulatedAnnotator(temperature=0.0)


def test_annotator_choices_are_seeded() -> None:
    pairs = _random_pairs(50)
    first = [SimulatedAnnotator(seed=3)(p, a, b) for p, a, b in pairs]
    assert first == [SimulatedAnnotator(seed=3)(p, a, b) for p, a, b in pairs]


def test_verbosity_bias_prefers_padded_answers_against_gold() -> None:
    ideal = ideal_response(PROMPT)
    padded = " ".join([ideal, *CLAUSES["padding"][:2]])
    assert gold_score(PROMPT, padded) < gold_score(PROMPT, ideal)
    fair = SimulatedAnnotator(temperature=0.5)
    verbose = SimulatedAnnotator(temperature=0.5, verbosity_bias=0.2)
    assert verbose.name == "simulated-verbose"
    assert fair.prob_a(PROMPT, padded, ideal) < 0.1
    assert verbose.prob_a(PROMPT, padded, ideal) > 0.9
    assert [verbose(PROMPT, ideal, padded) for _ in range(20)].count("b") >= 18
