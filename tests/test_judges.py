"""Judges: the pairwise protocol (both orders, ties, position flips, parse failures) on scripted chat models
whose verdict the test controls; a judge on a tiny random hub-like model end to end as labeler and
evaluator; the reward-model judge; win rate; knockout best-of-N; Constitutional AI critique → revise."""

from __future__ import annotations

import copy
import math
import random
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlhf_widgets.evaluation.constitutional import CRITIQUE_REQUEST, Revision, critique_and_revise, record_revisions
from rlhf_widgets.evaluation.judged_best_of_n import best_of_n_with_judge, knockout
from rlhf_widgets.evaluation.judges import (
    DEFAULT_TEMPLATE,
    JudgeTemplate,
    PairwiseJudge,
    RewardModelJudge,
    parse_verdict,
)
from rlhf_widgets.evaluation.win_rates import judge_win_rate, wilson_interval
from rlhf_widgets.labeling import PreferenceStore, RewardModelLabeler, label_with
from rlhf_widgets.runtime.generation import SamplingSettings
from rlhf_widgets.runtime.models import load_causal_lm, load_chat_model, load_tokenizer
from rlhf_widgets.sandbox import curt_demo, gold_preference, ideal_response, make_prompts, random_response

VERDICT_MODES = ["logprob", "generate"]
_ANSWERS_RE = re.compile(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\nWhich answer", re.DOTALL)


class ScriptedChatLM(torch.nn.Module):
    """A stand-in chat model that replies `reply(conversation text)`: its next-token logits put +10 on the
    reply's first token (0 elsewhere), and `generate` returns the reply's tokens, then EOS."""

    def __init__(self, tokenizer, reply: Callable[[str], str]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # where the judge finds the device
        self.tokenizer, self.reply = tokenizer, reply
        self.seen: list[str] = []

    def _texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        texts = [self.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask, strict=True)]
        self.seen.extend(texts)
        return texts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        assert torch.equal(position_ids, (attention_mask.cumsum(-1) - 1).clamp(min=0))
        logits = torch.zeros(*input_ids.shape, len(self.tokenizer))
        for row, text in enumerate(self._texts(input_ids, attention_mask)):
            logits[row, -1, self.tokenizer.encode(self.reply(text), add_special_tokens=False)[0]] = 10.0
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        replies = [self.tokenizer.encode(self.reply(text), add_special_tokens=False)[: max_new_tokens - 1]
                   + [eos_token_id[0] if isinstance(eos_token_id, list) else eos_token_id]
                   for text in self._texts(input_ids, attention_mask)]
        width = max(map(len, replies))
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in replies])
        return torch.cat([input_ids, new], 1)


def answers(text: str) -> tuple[str, str]:
    return _ANSWERS_RE.search(text).groups()


def always_first(text: str) -> str:
    return "A"


def prefers_longer(text: str) -> str:
    first, second = answers(text)
    return "A" if len(first) > len(second) else "B" if len(second) > len(first) else "C"


@pytest.fixture(scope="module")
def tokenizer(hub_like_model_dir: Path):
    return load_tokenizer(hub_like_model_dir)


def scripted_judge(tokenizer, reply: Callable[[str], str], **kwargs) -> PairwiseJudge:
    return PairwiseJudge(ScriptedChatLM(tokenizer, reply), tokenizer, **kwargs)


PROMPTS = ["Where is my order?", "Refund please.", "Hi", "Cancel it."]
SHORT = ["Soon.", "Done.", "Hello there.", "Sure."]
LONG = ["It ships today, tracking follows.", "Your refund is on its way.", "Hi", "Cancelled; no charge."]


# ---------------------------------------------------------------- the protocol on scripted judges
@pytest.mark.parametrize("verdict", VERDICT_MODES)
def test_a_judge_that_always_says_A_gives_only_ties_once_the_answers_are_swapped(tokenizer, verdict: str) -> None:
    judge = scripted_judge(tokenizer, always_first, verdict=verdict)
    assert judge.judge_pairs(PROMPTS, SHORT, LONG) == ["tie"] * 4
    stats = judge.stats
    assert (stats.pairs, stats.replies, stats.position_flips, stats.ties, stats.parse_failures) == (4, 8, 4, 4, 0)
    assert stats.first_position_rate == 1.0
    one_order = scripted_judge(tokenizer, always_first, verdict=verdict, both_orders=False)
    assert one_order.judge_pairs(PROMPTS, SHORT, LONG) == ["a"] * 4
    assert (one_order.stats.replies, one_order.stats.position_flips, one_order.stats.ties) == (4, 0, 0)


@pytest.mark.parametrize("verdict", VERDICT_MODES)
def test_a_consistent_judge_keeps_its_verdicts_in_both_orders_and_counts_real_ties(tokenizer, verdict: str) -> None:
    judge = scripted_judge(tokenizer, prefers_longer, verdict=verdict)
    assert judge.judge_pairs(PROMPTS, SHORT, LONG) == ["b", "b", "a", "b"]  # "Hello there." > "Hi"
    assert judge("Same?", "abc", "xyz") == "tie"  # equal length: C in both orders
    stats = judge.stats.as_dict()
    assert {k: stats[k] for k in ("pairs", "replies", "position_flips", "ties", "decisive_replies")} == {
        "pairs": 5, "replies": 10, "position_flips": 0, "ties": 1, "decisive_replies": 8}
    assert stats["first_position_rate"] == 0.5
    judge.reset_stats()
    assert judge.stats.pairs == 0


def test_the_judge_sees_both_orders_and_the_template(tokenizer) -> None:
    model = ScriptedChatLM(tokenizer, always_first)
    PairwiseJudge(model, tokenizer).judge_pairs(["Q?"], ["first answer"], ["second answer"])
    assert [answers(text) for text in model.seen] == [("first answer", "second answer"),
                                                      ("second answer", "first answer")]
    assert model.seen[0].startswith("<|system|>You are an impartial judge.")
    assert "[User request]\nQ?\n\n" in model.seen[0] and model.seen[0].endswith("equally good.</s><|assistant|>")
    # a conversation is shown turn by turn
    model.seen.clear()
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Where is it?"}]
    PairwiseJudge(model, tokenizer, both_orders=False)(conversation, "x", "y")
    assert "[User request]\nuser: Hi\nassistant: Hello\nuser: Where is it?\n\n" in model.seen[0]


def test_greedy_replies_without_a_verdict_are_parse_failures_and_skip_the_pair(tokenizer) -> None:
    def garbled_on_refunds(text: str) -> str:
        return "Well, hmm" if "Refund" in text else prefers_longer(text)

    judge = scripted_judge(tokenizer, garbled_on_refunds, verdict="generate")
    assert judge.judge_pairs(PROMPTS, SHORT, LONG) == ["b", "skip", "a", "b"]
    assert (judge.stats.parse_failures, judge.stats.skips, judge.stats.replies) == (2, 1, 8)
    details = judge.judge_pairs_detailed(PROMPTS[1:2], SHORT[1:2], LONG[1:2])[0]
    assert [r.text for r in details.replies] == ["Well, hmm"] * 2 and details.replies[0].position is None
    # log-prob verdicts never fail to parse; the reply's low verdict mass is counted instead
    logprob = scripted_judge(tokenizer, garbled_on_refunds)
    assert logprob.judge_pairs(PROMPTS, SHORT, LONG) == ["b", "tie", "a", "b"]  # A, B, C equally (un)likely
    assert (logprob.stats.parse_failures, logprob.stats.low_verdict_mass, logprob.stats.skips) == (0, 2, 0)


def test_logprob_replies_carry_the_verdict_probabilities(tokenizer) -> None:
    judge = scripted_judge(tokenizer, always_first, both_orders=False)
    reply = judge.judge_pairs_detailed(["Q"], ["x"], ["y"])[0].replies[0]
    big, vocab = math.exp(10), len(tokenizer)
    assert reply.position == "first" and reply.text == "A"
    assert reply.probs["first"] == pytest.approx(big / (big + 2)) and sum(reply.probs.values()) == pytest.approx(1)
    assert reply.verdict_mass == pytest.approx((big + 2) / (big + vocab - 1), rel=1e-5)


@pytest.mark.parametrize(("reply", "position"), [
    ("A", "first"), (" B.", "second"), ("C", "tie"), ("Tie.", "tie"), ("tie", "tie"), ("Answer B", "second"),
    ("Verdict: A", "first"), ("**A**", "first"), ("After weighing both, [[B]]", "second"), ("[[C]]", "tie"),
    ("a good answer", None), ("Both are fine", None), ("Clearly A", None), ("", None), ("Alright", None),
])
def test_parse_verdict(reply: str, position: str | None) -> None:
    assert parse_verdict(reply) == position


# ---------------------------------------------------------------- settings and bad input
def test_bad_templates_and_verdict_words_are_refused(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"missing \['answer_b'\], unknown \['answer_c'\]"):
        JudgeTemplate(None, "{question} {answer_a} {answer_c}")
    model = ScriptedChatLM(tokenizer, always_first)
    with pytest.raises(ValueError, match=r"verdict_words\['tie'\] = \['tie'\]: none is a single token"):
        PairwiseJudge(model, tokenizer, verdict_words={"first": ["A"], "second": ["B"], "tie": ["tie"]})
    with pytest.raises(ValueError, match="spell two verdicts with the same token"):
        PairwiseJudge(model, tokenizer, verdict_words={"first": ["A"], "second": ["A"], "tie": ["C"]})
    with pytest.raises(ValueError, match="must be a non-empty list of words"):
        PairwiseJudge(model, tokenizer, verdict_words={"first": "A", "second": ["B"], "tie": ["C"]})
    with pytest.raises(ValueError, match="verdict='sample'"):
        PairwiseJudge(model, tokenizer, verdict="sample")
    # multi-token words are fine for greedy replies, which are parsed, not scored
    PairwiseJudge(model, tokenizer, verdict="generate", verdict_words={"first": ["A"], "second": ["B"], "tie": ["tie"]})


def test_models_are_refused_when_they_cannot_chat_or_batch(tokenizer, hub_like_model_dir: Path) -> None:
    model = ScriptedChatLM(tokenizer, always_first)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        PairwiseJudge(model)
    with pytest.raises(ValueError, match="a model id or path loads its own"):
        PairwiseJudge(str(hub_like_model_dir), tokenizer)
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        PairwiseJudge(model, plain)
    unpadded = copy.deepcopy(tokenizer)
    unpadded.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        load_chat_model((model, unpadded))
    assert load_chat_model((model, tokenizer)) == (model, tokenizer)
    with pytest.raises(ValueError, match="one of each per pair"):
        PairwiseJudge(model, tokenizer).judge_pairs(["q", "r"], ["a"], ["b"])
    with pytest.raises(ValueError, match=r"responses_b\[0\] must be a string"):
        PairwiseJudge(model, tokenizer)("q", "a", None)


def test_a_template_without_a_system_role_gets_the_system_text_in_the_user_turn(tokenizer) -> None:
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            "<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    model = ScriptedChatLM(strict, always_first)
    judge = PairwiseJudge(model, strict, both_orders=False)
    assert judge.fold_system and judge("Q", "x", "y") == "a"
    assert model.seen[0].startswith(f"<|user|>{DEFAULT_TEMPLATE.system}\n\n[User request]\nQ")
    assert not PairwiseJudge(model, tokenizer).fold_system


@pytest.mark.parametrize("verdict", VERDICT_MODES)
def test_an_overlong_judge_prompt_is_refused_naming_the_pair(tokenizer, verdict: str) -> None:
    judge = scripted_judge(tokenizer, always_first, verdict=verdict, max_length=500, batch_size=3)
    with pytest.raises(ValueError, match=r"judge prompt of pair 1 is \d+ tokens .* over max_length=500"):
        judge.judge_pairs(["q", "q"], ["short", "short"], ["short", "long " * 100])


# ---------------------------------------------------------------- reward-model judge
class LengthScorer:
    """A reward model that scores a response by its length, called as a reward function
    `(prompts, responses) -> scores` or through `score(prompts, responses)`."""

    def __call__(self, prompts: list, responses: list) -> torch.Tensor:
        return torch.tensor([float(len(r)) for r in responses])

    score = __call__


def test_reward_model_judge_compares_rewards_with_a_tie_margin() -> None:
    judge = RewardModelJudge(LengthScorer(), tie_margin=1)
    assert judge_win_rate(judge, PROMPTS, LONG, SHORT)["wins"] == 3  # "Hi" loses to "Hello there."
    assert judge("p", "ab", "abc") == "tie" and RewardModelJudge(LengthScorer())("p", "ab", "abc") == "b"
    assert RewardModelLabeler is RewardModelJudge


# ---------------------------------------------------------------- evaluator
def test_judge_win_rate_counts_ties_half_and_gives_the_wilson_interval(tokenizer) -> None:
    judge = scripted_judge(tokenizer, lambda text: "no idea" if "skip me" in text else prefers_longer(text),
                           verdict="generate")
    candidate = LONG + ["same", "Well", "a"]
    baseline = SHORT + ["SAME", "Well, hmm, it is long", "b"]
    result = judge_win_rate(judge, PROMPTS + ["Refund?", "x", "skip me"], candidate, baseline)
    assert (result["wins"], result["ties"], result["losses"], result["skips"], result["n"]) == (3, 1, 2, 1, 6)
    assert result["win_rate"] == pytest.approx(3.5 / 6)
    # the Wilson bounds are the roots of (p̂ − p)² = z² p (1 − p) / n
    z, n, rate = 1.959963984540054, 6, 3.5 / 6
    roots = sorted(np.roots([1 + z * z / n, -(2 * rate + z * z / n), rate * rate]))
    assert (result["lower"], result["upper"]) == pytest.approx(roots)
    assert wilson_interval(1.0, 10)[1] == 1.0 and wilson_interval(1.0, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(math.nan, 0))
    # the candidate is shown first on half the prompts: a judge that always picks a is at 1/2
    assert judge_win_rate(lambda *_: "a", PROMPTS, LONG, SHORT)["win_rate"] == 0.5
    assert judge_win_rate(lambda *_: "a", PROMPTS[:3], LONG[:3], SHORT[:3])["wins"] == 2
    with pytest.raises(ValueError, match="returned \\['maybe'\\]"):
        judge_win_rate(lambda *_: "maybe", ["q"], ["a"], ["b"])


def test_the_sandbox_gold_judge_is_an_evaluator_too() -> None:
    rng = random.Random(0)
    prompts = [p.text for p in make_prompts(12, seed=2)]
    result = judge_win_rate(gold_preference, prompts, [ideal_response(p) for p in prompts],
                            [curt_demo(p, rng) for p in prompts])
    assert (result["win_rate"], result["n"]) == (1.0, 12) and 0.7 < result["lower"] < 0.8


# ---------------------------------------------------------------- best-of-N
def test_knockout_keeps_the_earlier_candidate_on_ties_and_counts_matches() -> None:
    def longer(prompt: str, a: str, b: str) -> str:
        return "a" if len(a) > len(b) else "b" if len(b) > len(a) else "tie"

    candidates = [["a", "bbb", "cc", "dddd", "e"], ["xx", "yy", "zz"], ["only"]]
    winners, comparisons = knockout(longer, ["p", "q", "r"], candidates)
    assert winners == [3, 0, 0] and comparisons == 4 + 2 + 0
    assert knockout(lambda *_: "b", ["p"], [list("abcde")])[0] == [4]
    with pytest.raises(ValueError, match=r"candidates\[1\] must be a non-empty list"):
        knockout(longer, ["p", "q"], [["a"], []])


def test_best_of_n_with_a_judge_samples_n_and_keeps_the_knockout_winner(hub_like_model_dir: Path) -> None:
    rm = RewardModelJudge(LengthScorer())
    result = best_of_n_with_judge(["hello", "my order"], model=load_causal_lm(str(hub_like_model_dir)), judge=rm,
                                  n=4, settings=SamplingSettings(max_new_tokens=12), seed=1)
    assert [len(c) for c in result.candidates] == [4, 4] and result.comparisons == 6
    for response, winner, candidates in zip(result.responses, result.winners, result.candidates, strict=True):
        assert response == candidates[winner] and len(response) == max(map(len, candidates))
    assert result.kl_upper_bound == pytest.approx(math.log(4))


# ---------------------------------------------------------------- labeler: store and agreement
def test_judge_labels_recorded_with_label_with_show_up_in_store_agreement(tokenizer, tmp_path: Path) -> None:
    rng = random.Random(1)
    prompts = [p.text for p in make_prompts(10, seed=3)]
    rows = []
    for i, p in enumerate(prompts):  # good and bad answers on both sides
        good, bad = ideal_response(p), random_response(p, rng)
        rows.append({"prompt": p, "response_a": good if i % 2 else bad, "response_b": bad if i % 2 else good})
    judge = scripted_judge(tokenizer, prefers_longer)
    rm_judge = RewardModelJudge(LengthScorer())
    with PreferenceStore(tmp_path / "labels.sqlite") as store:
        store.add_pairs(rows)
        label_with(store, gold_preference, "gold", show_progress=False)
        assert label_with(store, judge, "judge-longer", show_progress=False) == 10
        label_with(store, rm_judge, "rm-length", show_progress=False)
        agreement = store.agreement(reference="gold").set_index("annotator")
        gold = [gold_preference(r["prompt"], r["response_a"], r["response_b"]) for r in rows]
        ours = judge.judge_pairs([r["prompt"] for r in rows], [r["response_a"] for r in rows],
                                 [r["response_b"] for r in rows])
    shared = [(g, o) for g, o in zip(gold, ours, strict=True) if g in "ab" and o in "ab"]
    assert agreement.loc["judge-longer", "n"] == len(shared) > 0
    assert agreement.loc["judge-longer", "agreement"] == pytest.approx(np.mean([g == o for g, o in shared]))
    assert set(agreement.index) == {"judge-longer", "rm-length"}
    assert judge.stats.pairs == 20  # label_with asked one pair at a time, then judge_pairs all ten


# ---------------------------------------------------------------- a judge on a real (tiny, random) model
def test_a_judge_on_a_fixture_model_runs_as_labeler_and_evaluator(hub_like_model_dir: Path, tmp_path: Path) -> None:
    # the fixture's context is 256 tokens of a 300-token vocabulary: a compact template and short answers
    compact = JudgeTemplate(None, "{question}\nA: {answer_a}\nB: {answer_b}\nBetter? A, B or C (tie).")
    judge = PairwiseJudge(str(hub_like_model_dir), template=compact, batch_size=4, name="judge-tiny")
    prompts = ["my order has not arrived", "hello", "how can I help", "order", "today?", "help me"]
    a = ["hello there, how can I help you today?", "hello", "my order", "arrived today", "how", "you"]
    b = ["my order has not arrived", "how can I help?", "there", "hello there", "help you today", "I"]
    with PreferenceStore(tmp_path / "labels.sqlite") as store:
        store.add_pairs({"prompt": p, "response_a": x, "response_b": y} for p, x, y in zip(prompts, a, b, strict=True))
        assert label_with(store, judge, judge.name, show_progress=False) == 6
        recorded = [label.choice for label in store.labels(judge.name)]
    batched = judge.judge_pairs_detailed(prompts, a, b)
    assert recorded == [j.verdict for j in batched]  # one at a time and batched: the same verdicts
    one_by_one = PairwiseJudge(str(hub_like_model_dir), template=compact, batch_size=1).judge_pairs_detailed(
        prompts, a, b)
    for x, y in zip(batched, one_by_one, strict=True):  # left padding changes nothing
        for rx, ry in zip(x.replies, y.replies, strict=True):
            assert rx.probs == pytest.approx(ry.probs, abs=1e-5) and rx.position == ry.position
    result = judge_win_rate(judge, prompts, a, b)
    assert result["n"] == 6 and result["wins"] + result["ties"] + result["losses"] == 6
    assert judge.stats.replies == 2 * judge.stats.pairs == 2 * 18 and judge.stats.parse_failures == 0
    greedy = PairwiseJudge(str(hub_like_model_dir), template=compact, verdict="generate", max_new_tokens=4)
    decided = greedy.judge_pairs(prompts[:2], a[:2], b[:2])
    assert decided.count("skip") == greedy.stats.skips and greedy.stats.replies == 4


# ---------------------------------------------------------------- Constitutional AI
def scripted_reviser(text: str) -> str:
    """Critiques name a missing apology; a revision is the latest answer plus one; no revision for 'silent'."""
    if text.endswith("Do not rewrite the answer yet.</s><|assistant|>"):
        return "It lacks an apology."
    if "silent" in text:
        return ""
    first_answer = re.search(r"<\|assistant\|>(.*?)</s>", text).group(1)
    return first_answer + " Sorry about that."


def test_critique_and_revise_applies_every_principle_to_the_latest_answer(tokenizer, tmp_path: Path) -> None:
    model = ScriptedChatLM(tokenizer, scripted_reviser)
    principles = ["Apologise for trouble.", "Be kind."]
    revisions = critique_and_revise(["Late order", "silent"], ["Wait.", "Hm."], principles, model=(model, tokenizer))
    first, silent = revisions
    assert first.revised == "Wait. Sorry about that. Sorry about that." and first.changed
    assert [(s.principle, s.critique) for s in first.steps] == [(p, "It lacks an apology.") for p in principles]
    assert first.steps[0].revision == "Wait. Sorry about that."
    assert silent.revised == "Hm." and not silent.changed
    assert CRITIQUE_REQUEST.format(principle="Be kind.") in model.seen[-2]  # the second round's critique request
    with PreferenceStore(tmp_path / "cai.sqlite") as store:
        many = [Revision("p", f"answer {i}", f"better answer {i}") for i in range(8)]
        ids = record_revisions(store, [*revisions, *many], seed=0)
        assert len(ids) == 9  # the unchanged revision is left out
        data = store.to_dataset(annotator="constitutional-ai")
        assert [c[0]["content"] for c in data["chosen"]] == [first.revised] + [r.revised for r in many]
        sides = {pair.metadata["a"]["source"] for pair in store.pairs()}
        pair = store.get_pair(ids[0])
    assert sides == {"revised", "original"}  # the revised answer goes on both sides across pairs
    assert pair.metadata["principles"] == principles


def test_critique_and_revise_refuses_bad_principles_and_requests(tokenizer) -> None:
    model = ScriptedChatLM(tokenizer, scripted_reviser)
    for principles, message in [("Be kind.", "must be a non-empty list of strings"), ([], "non-empty list"),
                                (["Be kind.", " "], r"principles\[1\] must be a non-empty string")]:
        with pytest.raises(ValueError, match=message):
            critique_and_revise(["p"], ["a"], principles, model=(model, tokenizer))
    with pytest.raises(ValueError, match=r"critique_request must use exactly the field \{principle\}"):
        critique_and_revise(["p"], ["a"], ["x"], model=(model, tokenizer), critique_request="Critique it.")
    with pytest.raises(ValueError, match=r"revisions\[0\] is a str, not a Revision"):
        record_revisions(None, ["text"])


def test_critique_and_revise_runs_on_a_fixture_model_by_path(hub_like_model_dir: Path) -> None:
    revisions = critique_and_revise(["my order has not arrived"], ["Check tracking."], ["Be polite."],
                                    model=str(hub_like_model_dir),
                                    settings=SamplingSettings(max_new_tokens=6, temperature=0.0))
    (revision,) = revisions
    assert revision.original == "Check tracking." and [s.principle for s in revision.steps] == ["Be polite."]
    assert revision.revised == (revision.steps[0].revision or revision.original)
