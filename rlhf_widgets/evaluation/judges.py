"""Judges: labelers that decide which of two answers is better, and what a judge is used for (RLAIF).

A judge follows the labeler protocol of `rlhf_widgets.labeling`: `judge(prompt, response_a, response_b)`
returns "a", "b", "tie" or "skip". Three kinds ship:

- `PairwiseJudge`: an LLM-as-judge over any local chat model (hub id, local path, or a loaded model and
  its tokenizer). It asks both orders (A/B, then B/A) to cancel position bias, reads the verdict from the
  next-token log-probs of the verdict letters (or from a greedy reply), and counts ties, parse failures
  and position flips in `judge.stats`.
- `RewardModelJudge`: compares two reward-model scores (`labeling.RewardModelLabeler` under another name).
- the sandbox's `gold_preference`: the ground truth, a plain function.

What a judge is used for:

- a labeler: `label_with(store, judge, "judge-qwen")` records its labels next to the human ones, and
  `store.agreement(reference="gold")` measures it against gold (or a human);
- an evaluator: `judge_win_rate(judge, prompts, candidate, baseline)`, ties ½, with a Wilson interval;
- the reward of best-of-N: `best_of_n_with_judge` keeps the winner of a knockout among N samples;
- Constitutional AI: `critique_and_revise` has a chat model critique and rewrite answers against written
  principles; `record_revisions` stores (revised ≻ original) pairs as an AI labeler's labels.

Nothing here renders HTML; model text shown elsewhere is escaped by the view that shows it.
"""

from __future__ import annotations

import math
import os
import random
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from rlhf_widgets.labeling.labelers import Labeler, RewardModelLabeler
from rlhf_widgets.runtime.chat import accepts_system_role
from rlhf_widgets.runtime.data import as_messages

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlhf_widgets.labeling.records import Choice
    from rlhf_widgets.labeling.store import PreferenceStore
    from rlhf_widgets.runtime.generation import SamplingSettings
    from rlhf_widgets.runtime.types import Prompt

Position = Literal["first", "second", "tie"]

RewardModelJudge = RewardModelLabeler
"""A reward model as a judge: `RewardModelJudge(reward_model, tie_margin=0.0)` compares the two responses'
rewards ("tie" when they differ by at most `tie_margin`). The labeling package's `RewardModelLabeler`, under
the name the judges go by."""


# ---------------------------------------------------------------------------------------------- LLM judge
@dataclass(frozen=True)
class JudgeTemplate:
    """The judge's prompt: an optional system message and a user message with the fields `{question}`,
    `{answer_a}` and `{answer_b}` (each at least once; no other fields).

    The default (`DEFAULT_TEMPLATE`) is an MT-Bench-style pairwise prompt (Zheng et al. 2023, "Judging
    LLM-as-a-judge"): the user's question, the two answers under headed sections, and a one-letter reply —
    A, B, or C for a tie — so that the verdict is the first token the judge produces. A model whose chat
    template rejects a system role (e.g. Gemma 2) gets the system text folded into the user message.
    """

    system: str | None
    user: str

    def __post_init__(self) -> None:
        names = {name for _, name, _, _ in string.Formatter().parse(self.user) if name is not None}
        needed = {"question", "answer_a", "answer_b"}
        if names != needed:
            missing, unknown = sorted(needed - names), sorted(names - needed)
            raise ValueError(f"JudgeTemplate.user must use exactly the fields {{question}}, {{answer_a}}, "
                             f"{{answer_b}}; missing {missing}, unknown {unknown} (write a literal brace as "
                             "{{ or }})")

    def messages(self, question: str, answer_a: str, answer_b: str, fold_system: bool = False) -> list[dict]:
        """The chat messages asking which of the two answers is better."""
        user = self.user.format(question=question, answer_a=answer_a, answer_b=answer_b)
        if self.system is None:
            return [{"role": "user", "content": user}]
        if fold_system:
            return [{"role": "user", "content": f"{self.system}\n\n{user}"}]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


DEFAULT_TEMPLATE = JudgeTemplate(
    system=(
        "You are an impartial judge. You compare two assistant answers to the same user request and decide "
        "which one serves the user better: correct, helpful, relevant, polite, and as long as it needs to be. "
        "Neither the order in which the answers appear nor their length is a reason to prefer one."
    ),
    user=(
        "[User request]\n{question}\n\n"
        "[Answer A]\n{answer_a}\n\n"
        "[Answer B]\n{answer_b}\n\n"
        "Which answer is better? Reply with one letter only: A if answer A is better, B if answer B is "
        "better, C if they are equally good."
    ),
)
DEFAULT_VERDICT_WORDS: Mapping[Position, tuple[str, ...]] = {"first": ("A",), "second": ("B",), "tie": ("C",)}
"""The words (tried with and without a leading space) that spell each verdict in `DEFAULT_TEMPLATE`."""

# a greedy reply's verdict: "[[A]]" anywhere (MT-Bench's format, C = tie), else a leading A / B / C / tie,
# optionally after "Answer" or "Verdict:" — a leading lower-case "a" is an article, not a verdict
_BRACKETED_RE = re.compile(r"\[\[\s*(A|B|C|(?i:tie))\s*\]\]")
_LEADING_RE = re.compile(r"^[\W_]*(?:(?i:answer|verdict|the better answer is)\W*)?(A|B|C|(?i:tie))\b")


@dataclass
class JudgeStats:
    """What a `PairwiseJudge` has decided so far (counts; `reset_stats` zeroes them)."""

    pairs: int = 0
    """pairs judged"""
    replies: int = 0
    """single-order judgments asked of the model (2 per pair when both orders are asked)"""
    parse_failures: int = 0
    """replies with no verdict in them (greedy replies only; log-prob verdicts always parse)"""
    low_verdict_mass: int = 0
    """log-prob replies whose verdict tokens held less than `min_verdict_mass` of the next-token probability"""
    first_position: int = 0
    """decisive replies (not ties) that picked the answer shown first"""
    decisive_replies: int = 0
    """replies that picked one answer (parsed, not a tie)"""
    position_flips: int = 0
    """pairs whose two orders disagreed once the answers were swapped (then the pair is a tie)"""
    ties: int = 0
    """pairs decided as a tie (the judge said so in both orders, or the orders disagreed)"""
    skips: int = 0
    """pairs left undecided because a reply did not parse"""

    @property
    def first_position_rate(self) -> float:
        """Share of decisive replies that chose the answer shown first: 0.5 is no position bias."""
        return self.first_position / self.decisive_replies if self.decisive_replies else math.nan

    def as_dict(self) -> dict[str, float]:
        """All counts plus `first_position_rate`."""
        counts = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**counts, "first_position_rate": self.first_position_rate}


@dataclass(frozen=True)
class JudgeReply:
    """The judge's verdict on one ordering of a pair, in positions ("first" = the answer shown as A)."""

    position: Position | None
    """"first", "second", "tie", or None when the reply did not parse"""
    text: str
    """the greedy reply, or the most likely verdict word (log-prob scoring)"""
    probs: dict[str, float] | None = None
    """log-prob scoring: P(first), P(second), P(tie) renormalised over the verdict tokens; else None"""
    verdict_mass: float | None = None
    """log-prob scoring: the next-token probability the verdict tokens held together; else None"""


@dataclass(frozen=True)
class JudgedPair:
    """A pair's verdict ("a", "b", "tie", "skip") with the reply of each ordering asked."""

    verdict: Choice
    replies: tuple[JudgeReply, ...]
    """the A/B ordering's reply, then (when both orders are asked) the B/A ordering's"""


class PairwiseJudge:
    """An LLM-as-judge over a local chat model, usable wherever a labeler is (`judge(prompt, a, b)`).

    Each pair is asked in both orders — answer a shown as A, then as B — to cancel position bias: when
    both replies name the same answer that answer wins; when they disagree (the verdict followed the
    position, a "position flip") the pair is a tie; a tie in both is a tie. With `both_orders=False` the
    A/B order alone decides (half the compute, position bias included).

    Verdicts (`verdict=`):

    - "logprob" (default): one forward pass per ordering; the verdict is whichever of the verdict tokens
      (A, B, C by default) has the highest next-token log-prob. It never fails to parse, needs no
      sampling, and gives a probability (`JudgeReply.probs`) as well as a label; its cost is one forward,
      not a generation. It reads a single token, so each verdict word must be one token for the tokenizer
      (single capital letters are, in byte-level BPE and SentencePiece vocabularies alike; a word that is
      not raises ValueError). `stats.low_verdict_mass` counts replies where the verdict tokens held less
      than `min_verdict_mass` of the probability — the model wanted to say something else (a reasoning
      model opening a thinking block, say), and the template or the mode does not suit it.
    - "generate": a greedy reply of up to `max_new_tokens`, parsed for "[[A]]" / "[[B]]" / "[[C]]"
      anywhere, else a leading A, B, C or "tie" (optionally after "Answer" or "Verdict:"). For judges that
      must write before they decide (raise `max_new_tokens` and ask for "[[A]]" in the template). A reply
      without a verdict is a parse failure and its pair a "skip".

    Args:
        model: a hub id, a local path (loaded with `rlhf_widgets.runtime.models.load_causal_lm`), a `ModelConfig`,
            a loaded causal LM (then `tokenizer` is required), or a `(model, tokenizer)` tuple.
        tokenizer: the loaded model's tokenizer, with a chat template and a pad token (default None).
        template: the judge prompt (default `DEFAULT_TEMPLATE`).
        verdict_words: the words of each position's verdict (default `DEFAULT_VERDICT_WORDS`: A, B, C);
            keys "first", "second", "tie". Used by "logprob"; "generate" parses the default letters.
        both_orders: ask A/B and B/A (default True).
        verdict: "logprob" (default) or "generate".
        batch_size: judge prompts per forward / generate call (default 8).
        max_new_tokens: length of a greedy reply, tokens (default 16; "generate" only).
        min_verdict_mass: threshold of `stats.low_verdict_mass` (default 0.5; "logprob" only).
        max_length: longest judge prompt, tokens (default the model config's `max_position_embeddings`,
            if it has one); a longer one raises ValueError naming the pair instead of being judged on a
            context the model was never trained on.
        name: the judge's name, e.g. the annotator name for `label_with` (default "judge").
    """

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        template: JudgeTemplate = DEFAULT_TEMPLATE,
        verdict_words: Mapping[Position, Sequence[str]] = DEFAULT_VERDICT_WORDS,
        both_orders: bool = True,
        verdict: Literal["logprob", "generate"] = "logprob",
        batch_size: int = 8,
        max_new_tokens: int = 16,
        min_verdict_mass: float = 0.5,
        max_length: int | None = None,
        name: str = "judge",
    ) -> None:
        if verdict not in ("logprob", "generate"):
            raise ValueError(f"PairwiseJudge: verdict={verdict!r} must be 'logprob' or 'generate'")
        if batch_size < 1:
            raise ValueError(f"PairwiseJudge: batch_size={batch_size} must be >= 1")
        if max_new_tokens < 1:
            raise ValueError(f"PairwiseJudge: max_new_tokens={max_new_tokens} must be >= 1")
        if not 0 <= min_verdict_mass <= 1:
            raise ValueError(f"PairwiseJudge: min_verdict_mass={min_verdict_mass} must be in [0, 1]")
        self.model, self.tokenizer = load_chat_model(model, tokenizer)
        self.template = template
        self.both_orders = both_orders
        self.verdict = verdict
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.min_verdict_mass = min_verdict_mass
        config_max = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.max_length = max_length if max_length is not None else config_max
        self.name = name
        self.fold_system = template.system is not None and not accepts_system_role(self.tokenizer)
        self.verdict_token_ids = _verdict_token_ids(self.tokenizer, verdict_words) if verdict == "logprob" else {}
        self.stats = JudgeStats()

    def reset_stats(self) -> None:
        """Zero `stats`."""
        self.stats = JudgeStats()

    def __call__(self, prompt: Prompt, a: str, b: str) -> Choice:
        """The labeler protocol: the verdict on one pair."""
        return self.judge_pairs([prompt], [a], [b])[0]

    def judge_pairs(self, prompts: Sequence[Prompt], responses_a: Sequence[str],
                    responses_b: Sequence[str]) -> list[Choice]:
        """Verdicts ("a", "b", "tie", "skip") for many pairs, batched `batch_size` judge prompts at a time."""
        return [judged.verdict for judged in self.judge_pairs_detailed(prompts, responses_a, responses_b)]

    def judge_pairs_detailed(self, prompts: Sequence[Prompt], responses_a: Sequence[str],
                             responses_b: Sequence[str]) -> list[JudgedPair]:
        """`judge_pairs` with each ordering's reply (text, position, probabilities); updates `stats`."""
        prompts, responses_a, responses_b = _checked_pairs(prompts, responses_a, responses_b)
        questions = [_question_text(p) for p in prompts]
        asked = [(q, a, b) for q, a, b in zip(questions, responses_a, responses_b, strict=True)]
        if self.both_orders:
            asked += [(q, b, a) for q, a, b in zip(questions, responses_a, responses_b, strict=True)]
        conversations = [self.template.messages(*row, fold_system=self.fold_system) for row in asked]
        n = len(prompts)
        replies = self._ask(conversations, n)
        judged = []
        for i in range(n):
            pair_replies = (replies[i], replies[n + i]) if self.both_orders else (replies[i],)
            judged.append(JudgedPair(_combine(pair_replies, self.stats), pair_replies))
        self.stats.pairs += n
        return judged

    # ---------------------------------------------------------------- asking the model
    def _ask(self, conversations: list[list[dict]], n_pairs: int) -> list[JudgeReply]:
        """One reply per conversation; conversation i belongs to pair i mod `n_pairs` (the B/A orderings
        follow the A/B ones)."""
        replies: list[JudgeReply] = []
        ask = self._ask_logprob if self.verdict == "logprob" else self._ask_generate
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start:start + self.batch_size]
            replies.extend(ask(batch, [(start + k) % n_pairs for k in range(len(batch))]))
        for reply in replies:
            self.stats.replies += 1
            self.stats.parse_failures += reply.position is None
            if reply.verdict_mass is not None:
                self.stats.low_verdict_mass += reply.verdict_mass < self.min_verdict_mass
            if reply.position in ("first", "second"):
                self.stats.decisive_replies += 1
                self.stats.first_position += reply.position == "first"
        return replies

    def _encoded(self, batch: list[list[dict]], pair_indices: list[int], extra_tokens: int) -> dict[str, torch.Tensor]:
        """The batch chat-formatted and left-padded; ValueError naming the pair if one is over `max_length`."""
        from rlhf_widgets.runtime.generation import encode_prompts

        encoded = encode_prompts(self.tokenizer, batch, next(self.model.parameters()).device)
        if self.max_length is not None:
            for index, length in zip(pair_indices, encoded["attention_mask"].sum(1).tolist(), strict=True):
                if length + extra_tokens > self.max_length:
                    raise ValueError(
                        f"PairwiseJudge: the judge prompt of pair {index} is {length} tokens (+{extra_tokens} "
                        f"to generate), over max_length={self.max_length}; shorten the answers, or pass a "
                        "larger max_length if the model handles longer contexts")
        return encoded

    def _ask_logprob(self, batch: list[list[dict]], pair_indices: list[int]) -> list[JudgeReply]:
        import torch

        encoded = self._encoded(batch, pair_indices, extra_tokens=0)
        mask = encoded["attention_mask"]
        # left padding: positions count real tokens only, so a padded row sees the positions it would alone
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=encoded["input_ids"], attention_mask=mask, position_ids=position_ids).logits
        logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()  # (B, V): the next token
        replies = []
        for row in logprobs:
            scores = {pos: torch.logsumexp(row[ids], 0).item() for pos, ids in self.verdict_token_ids.items()}
            mass = sum(math.exp(s) for s in scores.values())
            probs = {pos: math.exp(s) / mass if mass > 0 else 1 / len(scores) for pos, s in scores.items()}
            best = max(scores.values())
            top = [pos for pos, s in scores.items() if s == best]
            position: Position = top[0] if len(top) == 1 else "tie"  # exactly equal: no preference
            replies.append(JudgeReply(position, self._word(position), probs, mass))
        return replies

    def _ask_generate(self, batch: list[list[dict]], pair_indices: list[int]) -> list[JudgeReply]:
        from rlhf_widgets.runtime.generation import SamplingSettings, generate

        self._encoded(batch, pair_indices, extra_tokens=self.max_new_tokens)  # length check only
        settings = SamplingSettings(max_new_tokens=self.max_new_tokens, temperature=0.0)
        outs = generate(self.model, self.tokenizer, batch, settings, batch_size=len(batch))
        return [JudgeReply(parse_verdict(out.text), out.text) for out in outs]

    def _word(self, position: Position) -> str:
        return self.tokenizer.decode(self.verdict_token_ids[position][:1]).strip()


def parse_verdict(reply: str) -> Position | None:
    """The verdict of a greedy judge reply in positions, or None if it holds none.

    "[[A]]", "[[B]]", "[[C]]" (C = tie; MT-Bench's format) anywhere, else a leading "A", "B", "C" or "tie"
    (any case for "tie"), optionally after "Answer" or "Verdict:".
    """
    match = _BRACKETED_RE.search(reply) or _LEADING_RE.match(reply.strip())
    if match is None:
        return None
    word = match.group(1).upper()
    return {"A": "first", "B": "second"}.get(word, "tie")


def _combine(replies: tuple[JudgeReply, ...], stats: JudgeStats) -> Choice:
    """One pair's verdict from its replies (A/B ordering first); counts ties, flips and skips in `stats`."""
    first = replies[0].position
    as_choice: list[Choice | None] = [{"first": "a", "second": "b", "tie": "tie", None: None}[first]]
    if len(replies) == 2:  # B/A ordering: the answer shown first is b
        as_choice.append({"first": "b", "second": "a", "tie": "tie", None: None}[replies[1].position])
    if None in as_choice:
        stats.skips += 1
        return "skip"
    if len(set(as_choice)) > 1:
        stats.position_flips += 1
        stats.ties += 1
        return "tie"
    stats.ties += as_choice[0] == "tie"
    return as_choice[0]


def load_chat_model(model: Any, tokenizer: PreTrainedTokenizerBase | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A chat model and its tokenizer from a hub id, a path, a `ModelConfig`, a loaded model plus tokenizer,
    or a `(model, tokenizer)` tuple; ValueError when the tokenizer cannot format chats or pad."""
    if isinstance(model, tuple):
        if len(model) != 2 or tokenizer is not None:
            raise ValueError("pass a loaded model as (model, tokenizer), or as model and tokenizer=, not both")
        model, tokenizer = model
    if isinstance(model, (str, os.PathLike)) or hasattr(model, "model_name_or_path"):
        if tokenizer is not None:
            raise ValueError("tokenizer= goes with an already loaded model; a model id or path loads its own")
        from rlhf_widgets.runtime.models import load_causal_lm

        model, tokenizer = load_causal_lm(model if hasattr(model, "model_name_or_path") else str(model))
    elif tokenizer is None:
        raise ValueError(f"a loaded model ({type(model).__name__}) needs its tokenizer: pass tokenizer=")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template, so it cannot be asked a question as a chat: use an "
                         "instruct/chat model, or set tokenizer.chat_template")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, so prompts cannot be batched: load the model with "
                         "rlhf_widgets.runtime.models.load_causal_lm (it adds one), or set tokenizer.pad_token")
    return model, tokenizer


def _verdict_token_ids(tokenizer: PreTrainedTokenizerBase,
                       words: Mapping[Position, Sequence[str]]) -> dict[Position, list[int]]:
    """Token ids of each verdict's words that are one token, with and without a leading space."""
    if set(words) != {"first", "second", "tie"}:
        raise ValueError(f"verdict_words needs exactly the keys 'first', 'second', 'tie', got {sorted(words)}")
    ids: dict[Position, list[int]] = {}
    for position, spellings in words.items():
        if isinstance(spellings, str) or not spellings:
            raise ValueError(f"verdict_words[{position!r}] must be a non-empty list of words, got {spellings!r}")
        found = []
        for word in spellings:
            for variant in (word, " " + word):
                encoded = tokenizer.encode(variant, add_special_tokens=False)
                if len(encoded) == 1 and encoded[0] not in found:
                    found.append(encoded[0])
        if not found:
            raise ValueError(f"verdict_words[{position!r}] = {list(spellings)}: none is a single token for this "
                             "tokenizer, and log-prob scoring reads one next token; use single letters, or "
                             "verdict='generate'")
        ids[position] = found
    uses = Counter(token for tokens in ids.values() for token in tokens)
    shared = sorted(token for token, count in uses.items() if count > 1)
    if shared:
        raise ValueError(f"verdict_words spell two verdicts with the same token ({tokenizer.decode(shared)!r})")
    return ids


def _question_text(prompt: Prompt) -> str:
    """The user's request as the judge reads it: a string as is; a conversation as "role: content" lines."""
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _checked_pairs(prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
                   ) -> tuple[list[Prompt], list[str], list[str]]:
    prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} responses_a and {len(responses_b)} "
                         "responses_b: one of each per pair")
    for side, responses in (("responses_a", responses_a), ("responses_b", responses_b)):
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise ValueError(f"{side}[{i}] must be a string, got {type(response).__name__}")
    return prompts, responses_a, responses_b


def verdicts(judge: Labeler, prompts: Sequence[Prompt], responses_a: Sequence[str],
             responses_b: Sequence[str]) -> list[str]:
    """Any judge's verdicts on many pairs: batched through `judge.judge_pairs` where it has one, else one
    `judge(prompt, a, b)` call per pair (e.g. `gold_preference`, a `SimulatedAnnotator`)."""
    if hasattr(judge, "judge_pairs"):
        return list(judge.judge_pairs(prompts, responses_a, responses_b))
    prompts, responses_a, responses_b = _checked_pairs(prompts, responses_a, responses_b)
    return [judge(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)]


# ---------------------------------------------------------------------------------------------- evaluator
def judge_win_rate(judge: Labeler, prompts: Sequence[Prompt], candidate: Sequence[str],
                   baseline: Sequence[str], confidence: float = 0.95) -> dict[str, float]:
    """How often `candidate` beats `baseline` under `judge`, ties ½, with a Wilson score interval.

    The candidate is shown as answer a on even-numbered prompts and as b on odd ones, so a judge that
    favours a position (a human, or a `PairwiseJudge` with `both_orders=False`) favours neither side.
    Skips (unparseable replies) are left out of `n` and reported. The Wilson interval treats the score
    (wins + ties/2)/n as a binomial proportion: the usual interval for a judge that never ties, and
    conservative (wider than needed) with ties, since a ½ outcome varies less than a coin flip.

    Returns `win_rate`, `lower`, `upper` (the interval at `confidence`, default 0.95), `wins`, `ties`,
    `losses`, `skips`, `n` (decided pairs). With n = 0 the rate and bounds are NaN.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"judge_win_rate: confidence={confidence} must be in (0, 1)")
    prompts, candidate, baseline = _checked_pairs(prompts, candidate, baseline)
    shown_a = [c if i % 2 == 0 else b for i, (c, b) in enumerate(zip(candidate, baseline, strict=True))]
    shown_b = [b if i % 2 == 0 else c for i, (c, b) in enumerate(zip(candidate, baseline, strict=True))]
    decided = verdicts(judge, prompts, shown_a, shown_b)
    unknown = sorted(set(decided) - {"a", "b", "tie", "skip"})
    if unknown:
        raise ValueError(f"judge_win_rate: the judge returned {unknown}; a judge returns 'a', 'b', 'tie' or 'skip'")
    swap = {"a": "b", "b": "a", "tie": "tie", "skip": "skip"}
    decided = [v if i % 2 == 0 else swap[v] for i, v in enumerate(decided)]  # now "a" = the candidate won
    wins, losses, ties = decided.count("a"), decided.count("b"), decided.count("tie")
    n = wins + losses + ties
    rate = (wins + ties / 2) / n if n else math.nan
    lower, upper = wilson_interval(rate, n, confidence)
    return {"win_rate": rate, "lower": lower, "upper": upper, "wins": wins, "ties": ties, "losses": losses,
            "skips": decided.count("skip"), "n": n}


def wilson_interval(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `rate` observed over `n` trials (Wilson 1927); NaNs for n = 0."""
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------- best-of-N
@dataclass
class JudgedBestOfN:
    """Per prompt: the knockout winner among N candidates, its index, and every candidate."""

    responses: list[str]
    winners: list[int]
    """index of the chosen candidate per prompt"""
    candidates: list[list[str]]
    comparisons: int
    """pairs judged in all (N − 1 per prompt)"""
    n: int

    @property
    def kl_upper_bound(self) -> float:
        """KL(selection ‖ sampler) ≤ log N nats for any rule that keeps one of N samples (the rule's density
        is at most N times the sampler's). It is log N − (N−1)/N, as for reward best-of-N, only when the
        judge orders the candidates transitively without ties."""
        return math.log(self.n)


def knockout(judge: Labeler, prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]]) -> tuple[list[int], int]:
    """The winner's index among each prompt's candidates in a single-elimination tournament, and the number
    of pairs judged.

    Round by round, candidates meet in listed order (0 vs 1, 2 vs 3, …; an odd one out goes through). A tie
    or skip keeps the earlier candidate: samples are exchangeable, so this favours no kind of answer. Each
    round judges every prompt's matches in one batched call. A prompt's candidate lists may differ in
    length; each must hold at least one.
    """
    prompts = list(prompts)
    if len(prompts) != len(candidates):
        raise ValueError(f"knockout: {len(prompts)} prompts but {len(candidates)} candidate lists")
    for i, cands in enumerate(candidates):
        if isinstance(cands, str) or len(cands) == 0:
            raise ValueError(f"knockout: candidates[{i}] must be a non-empty list of responses, got {cands!r}")
    alive = [list(range(len(cands))) for cands in candidates]  # per prompt: indices still in the tournament
    comparisons = 0
    while any(len(a) > 1 for a in alive):
        # this round's matches of every prompt: (prompt, earlier candidate, later candidate)
        matches = [(p, a[k], a[k + 1]) for p, a in enumerate(alive) for k in range(0, len(a) - 1, 2)]
        decided = verdicts(judge, [prompts[p] for p, _, _ in matches], [candidates[p][x] for p, x, _ in matches],
                           [candidates[p][y] for p, _, y in matches])
        comparisons += len(matches)
        next_alive: list[list[int]] = [[] for _ in alive]
        for (p, x, y), verdict in zip(matches, decided, strict=True):
            next_alive[p].append(y if verdict == "b" else x)
        for p, a in enumerate(alive):
            if len(a) % 2:  # the odd one out goes through
                next_alive[p].append(a[-1])
        alive = next_alive
    return [a[0] for a in alive], comparisons


def best_of_n_with_judge(
    prompts: Sequence[Prompt], *, model: Any, judge: Labeler, n: int = 8, settings: SamplingSettings | None = None,
    seed: int = 0, batch_size: int = 64,
) -> JudgedBestOfN:
    """Best-of-N with a pairwise judge as the reward: sample `n` responses per prompt from `model` (as
    `best_of_n` does: seed + i for the i-th sample) and keep the winner of a `knockout` among them (N − 1
    judged pairs per prompt; 2(N − 1) judge prompts for a `PairwiseJudge` asking both orders). No reference
    answer is needed: the judge only ever compares two candidates.

    `model` is a hub id, a local path, a `ModelConfig` or a loaded `(model, tokenizer)` pair; `judge` any
    labeler (a `PairwiseJudge`, `RewardModelJudge`, `gold_preference`).
    """
    from rlhf_widgets.runtime.generation import generate

    if n < 1:
        raise ValueError(f"best_of_n_with_judge: n={n} must be >= 1")
    loaded, tokenizer = load_chat_model(model)
    prompts = list(prompts)
    candidates: list[list[str]] = [[] for _ in prompts]
    for i in range(n):
        for j, out in enumerate(generate(loaded, tokenizer, prompts, settings, batch_size=batch_size, seed=seed + i)):
            candidates[j].append(out.text)
    winners, comparisons = knockout(judge, prompts, candidates)
    return JudgedBestOfN(responses=[c[w] for c, w in zip(candidates, winners, strict=True)], winners=winners,
                         candidates=candidates, comparisons=comparisons, n=n)


# ---------------------------------------------------------------------------------------------- Constitutional AI
CRITIQUE_REQUEST = (
    "Critique your previous answer against this principle: {principle}\n"
    "Say concretely what in the answer goes against the principle, if anything. Do not rewrite the answer yet."
)
"""The user turn that asks for a critique; `{principle}` is one of the principles."""
REVISION_REQUEST = (
    "Now rewrite your answer so that it follows the principle ({principle}) and fixes what your critique "
    "found. Reply with the rewritten answer only."
)
"""The user turn that asks for the revision, after the critique."""


@dataclass(frozen=True)
class RevisionStep:
    """One principle's critique and the revision it led to."""

    principle: str
    critique: str
    revision: str
    """the model's rewrite ("" if it produced none; the answer then stays as it was)"""


@dataclass(frozen=True)
class Revision:
    """An answer before and after critique → revise against every principle in turn."""

    prompt: Prompt
    original: str
    revised: str
    """the last non-empty revision, or the original when the model never produced one"""
    steps: tuple[RevisionStep, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        """Whether the revision differs from the original (ignoring surrounding whitespace)."""
        return self.revised.strip() != self.original.strip()


def critique_and_revise(
    prompts: Sequence[Prompt], responses: Sequence[str], principles: Sequence[str], *, model: Any,
    settings: SamplingSettings | None = None, seed: int = 0,
    batch_size: int = 16, critique_request: str = CRITIQUE_REQUEST, revision_request: str = REVISION_REQUEST,
) -> list[Revision]:
    """Constitutional AI's supervised step (Bai et al. 2022): a chat model critiques each answer against a
    written principle, then rewrites it; repeated for every principle in turn, each on the latest answer.

    The conversation the model sees is the prompt, the answer as its own assistant turn, the critique
    request, its critique, and the revision request. Bai et al. draw one principle at random per round;
    pass a shuffled subset to do the same.

    It needs a model that follows instructions (a 0.5B+ instruct model at least). On the sandbox's 4M
    model — trained only to answer support requests — the "critiques" and "revisions" are noise: it cannot
    read a principle, so the revised answers are other samples of its usual replies, no better than the
    originals. There the code runs (and tests run it) but shows nothing about Constitutional AI.

    Args:
        prompts, responses: the answers to revise, one per prompt.
        principles: a list of non-empty strings, e.g. "Do not promise what the company cannot do.".
        model: the chat model that critiques and revises: a hub id, a local path, a `ModelConfig`, or a
            loaded `(model, tokenizer)` pair — see `load_chat_model`.
        settings: sampling of critiques and revisions (default greedy, up to 256 new tokens).
        seed: sampling seed (default 0).
        batch_size: conversations per generate call (default 16).
        critique_request, revision_request: the user turns asking for each, with a `{principle}` field.
    """
    from rlhf_widgets.runtime.generation import SamplingSettings, generate

    if isinstance(principles, str) or not principles:
        raise ValueError("critique_and_revise: principles must be a non-empty list of strings, got "
                         f"{principles!r}")
    for i, principle in enumerate(principles):
        if not isinstance(principle, str) or not principle.strip():
            raise ValueError(f"critique_and_revise: principles[{i}] must be a non-empty string, got {principle!r}")
    for name, request in (("critique_request", critique_request), ("revision_request", revision_request)):
        names = {n for _, n, _, _ in string.Formatter().parse(request) if n is not None}
        if names != {"principle"}:
            raise ValueError(f"critique_and_revise: {name} must use exactly the field {{principle}}, "
                             f"uses {sorted(names)}")
    prompts, responses, _ = _checked_pairs(prompts, responses, responses)
    model, tokenizer = load_chat_model(model)
    settings = settings or SamplingSettings(max_new_tokens=256, temperature=0.0)
    current = list(responses)
    steps: list[list[RevisionStep]] = [[] for _ in prompts]
    for round_index, principle in enumerate(principles):
        talks = [as_messages(p) + [{"role": "assistant", "content": answer},
                                   {"role": "user", "content": critique_request.format(principle=principle)}]
                 for p, answer in zip(prompts, current, strict=True)]
        critiques = [g.text for g in generate(model, tokenizer, talks, settings, batch_size=batch_size,
                                              seed=seed + 2 * round_index)]
        talks = [talk + [{"role": "assistant", "content": critique},
                         {"role": "user", "content": revision_request.format(principle=principle)}]
                 for talk, critique in zip(talks, critiques, strict=True)]
        revisions = [g.text for g in generate(model, tokenizer, talks, settings, batch_size=batch_size,
                                              seed=seed + 2 * round_index + 1)]
        for i, (critique, revision) in enumerate(zip(critiques, revisions, strict=True)):
            steps[i].append(RevisionStep(principle, critique, revision))
            if revision.strip():
                current[i] = revision
    return [Revision(prompt, original, revised, tuple(pair_steps))
            for prompt, original, revised, pair_steps in zip(prompts, responses, current, steps, strict=True)]


def record_revisions(store: PreferenceStore, revisions: Sequence[Revision], annotator: str = "constitutional-ai",
                     *, seed: int = 0) -> list[int]:
    """Add (revised, original) pairs to `store` and label the revised side as preferred by `annotator`.

    Revisions that changed nothing (or whose original is empty) are left out. The revised answer goes on a
    random side (seeded), so a later human labeling or an agreement score sees no side pattern;
    `metadata["a"]["source"]` / `metadata["b"]["source"]` say which side is "revised" and which "original",
    and `metadata["principles"]` lists the principles. Returns the new pairs' ids.
    """
    rng = random.Random(seed)
    rows, revised_side = [], []
    for i, revision in enumerate(revisions):
        if not isinstance(revision, Revision):
            raise ValueError(f"record_revisions: revisions[{i}] is a {type(revision).__name__}, not a Revision "
                             "(pass what critique_and_revise returned)")
        if not revision.changed or not revision.original.strip():
            continue
        side = rng.choice("ab")
        answers = {"a": revision.revised, "b": revision.original} if side == "a" else \
            {"a": revision.original, "b": revision.revised}
        sources = {s: {"source": "revised" if s == side else "original"} for s in "ab"}
        rows.append({"prompt": revision.prompt, "response_a": answers["a"], "response_b": answers["b"],
                     "metadata": {**sources, "principles": [step.principle for step in revision.steps]}})
        revised_side.append(side)
    ids = store.add_pairs(rows)
    for pair_id, side in zip(ids, revised_side, strict=True):
        store.record(pair_id, side, annotator=annotator)
    return ids
