"""Judges: labelers that decide which of two answers is better (RLAIF), and how any judge is asked about many pairs.

A judge follows the labeler protocol of `rlhf_widgets.labeling`: `judge(prompt, response_a, response_b)`
returns "a", "b", "tie" or "skip". Three kinds ship:

- `PairwiseJudge`: an LLM-as-judge over any local chat model (hub id, local path, or a loaded model and
  its tokenizer). It asks both orders (A/B, then B/A) to cancel position bias, reads the verdict from the
  next-token log-probs of the verdict letters (or from a greedy reply), and counts ties, parse failures
  and position flips in `judge.stats`.
- `RewardModelJudge`: compares two reward-model scores (`labeling.RewardModelLabeler` under another name).
- the sandbox's `gold_preference`: the ground truth, a plain function.

`verdicts(judge, prompts, responses_a, responses_b)` asks any of them about many pairs (batched where the judge
batches); `checked_pairs` is the check of parallel prompt and response lists that every use shares.

What a judge is used for, and where:

- a labeler: `label_with(store, judge, "judge-qwen")` records its labels next to the human ones, and
  `store.agreement(reference="gold")` measures it against gold (or a human);
- an evaluator: `evaluation.win_rates.judge_win_rate`, ties ½, with a Wilson interval;
- the reward of best-of-N: `evaluation.judged_best_of_n.best_of_n_with_judge`, the winner of a knockout;
- a leaderboard: `evaluation.leaderboard.judgments_from_responses`.

Constitutional AI (`evaluation.constitutional`) has a chat model critique and revise answers instead of judging.
Nothing here renders HTML; model text shown elsewhere is escaped by the view that shows it.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from rlhf_widgets.labeling.labelers import Labeler, RewardModelLabeler
from rlhf_widgets.runtime.chat import accepts_system_role
from rlhf_widgets.runtime.data import as_messages
from rlhf_widgets.runtime.generation import SamplingSettings, encode_prompts, generate
from rlhf_widgets.runtime.models import load_chat_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from rlhf_widgets.labeling.records import Choice
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
        prompts, responses_a, responses_b = checked_pairs(prompts, responses_a, responses_b)
        questions = [question_text(p) for p in prompts]
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


def question_text(prompt: Prompt) -> str:
    """The user's request as the judge reads it: a string as is; a conversation as "role: content" lines."""
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def checked_pairs(prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
                  ) -> tuple[list[Prompt], list[str], list[str]]:
    """The three parallel lists of a batch of pairs, as lists; ValueError unless there is one of each per pair and
    every response is a string."""
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
    prompts, responses_a, responses_b = checked_pairs(prompts, responses_a, responses_b)
    return [judge(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)]
