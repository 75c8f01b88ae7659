"""The sandbox world: a customer-support desk small enough for a 2-core CPU.

**Prompts.** A customer writes about one of eight issues (``ISSUES``): a late delivery (the seed
example: "My order hasn't arrived. What should I do?"), a damaged item, a wrong item, a refund
request, an order to cancel, a shipping address to change, login trouble or a double charge. Each
prompt is a phrasing of the issue (``PROMPT_PHRASINGS``) with slots for the order number
(``#48213``) and often the product, wrapped in a tone: neutral, polite or angry (``TONE_WRAPPERS``).
Train and test prompts never share an order number (test: the numbers divisible by 7).

**Responses** are sequences of clauses (``CLAUSES``), one sentence each, joined by spaces:

- good clauses: a *greeting*, *empathy* (an apology), a *lookup* naming the order number ("I've
  pulled up order #48213."), the *action* that fits the issue (several paraphrases per issue in
  ``ACTIONS``; some of them name the order number), an *offer* of further help and a *closing*;
- bad clauses: *rude* remarks, a *wrong action* (another issue's action), a *wrong order number*,
  *repetition* of a clause, and *padding* — wordy, content-free sentences ("We truly value each and
  every one of our customers…") of the kind a verbosity-biased annotator likes.

**What "good" means here** (scored by ``gold.gold_score``): the right action above all, naming the
customer's order number, then greeting, empathy (worth twice as much to an angry customer), an offer
of further help and a closing — in at most about 55 words, nothing rude, wrong, repeated or padded.
``ideal_response`` is such an answer (gold ≈ +5). ``curt_demo`` is what the supervised
demonstrations look like: the right action and little else ("Check your tracking number.",
gold ≈ +2.7). ``random_response`` is the clause mix the base model is pretrained on (gold ≈ 0).
RLHF is meant to move a policy from the curt demonstrations to the ideal answer.

**Failure-mode scenarios** (opt-in, ``scenarios.py``): ``make_prompts(n, scenarios=("sycophancy",
"refusal"))`` turns a share of the prompts into false claims by the customer, alarming but benign
requests, and out-of-scope requests; ``sft_dataset(n, scenarios=...)`` demonstrates them at an
imperfect rate (some demonstrations agree with a false claim or deflect an alarming request). With
``scenarios=()`` (the default) prompts and demonstrations are exactly those of the default world.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from datasets import Dataset

from rlhf_widgets.sandbox.scenarios import (
    ALARM_SENTENCES,
    ALARMING,
    ALARMING_DEFLECTION_RATE,
    CLAIM_DEMO_RATES,
    COMPLIANCE,
    DEFAULT_SCENARIO_SHARE,
    DEFLECTIONS,
    FALSE_CLAIM,
    FALSE_CLAIMS,
    OUT_OF_SCOPE,
    OUT_OF_SCOPE_COMPLIANCE_RATE,
    OUT_OF_SCOPE_REQUESTS,
    PROMPT_KINDS,
    REFUSALS,
    SCENARIOS,
    STANDARD,
    WRONG_ORDER_NUMBERS,
)
from rlhf_widgets.sandbox.vocabulary import (  # the tables `world` builds prompts and answers from
    ACTIONS,
    CLAUSES,
    IDEAL_CLAUSES,
    ISSUES,
    ORDER_NUMBERS,
    PRODUCTS,
    PROMPT_PHRASINGS,
    SPLITS,
    TEST_ORDER_MODULUS,
    TONE_WEIGHTS,
    TONE_WRAPPERS,
    TONES,
)

_ISSUE_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("double_charge", ("charged twice", "charged me twice", "billed me twice", "two payments", "double")),
    ("login_trouble", ("log in", "login", "password", "locked out", "sign in")),
    ("change_address", ("address", "moved")),
    ("cancel_order", ("cancel",)),
    ("refund_request", ("refund", "money back")),
    ("wrong_item", ("wrong item", "wrong product", "instead of")),
    ("damaged_item", ("damaged", "broken", "cracked")),
    ("late_delivery", ("arrive", "delivered", "where is", "late", "shipping", "tracking")),
)
"""Issue cues checked in this order (most specific first) by ``parse_prompt``."""
_ANGRY_CUES = ("unacceptable", "seriously", "fed up", "worst", "fix this now", "sort it out", "ridiculous")
_POLITE_CUES = ("hello!", "sorry to bother", "thanks in advance", "thank you", "good morning", "appreciate")
_ORDER_RE = re.compile(r"#\d+")


@dataclass(frozen=True)
class SupportPrompt:
    """One customer message and the slots it was built from.

    ``order_id`` includes the hash (``"#48213"``); it and ``product`` are ``None`` when the text
    does not mention one. ``kind`` is ``"standard"`` (the default world) or a failure-mode kind of
    ``scenarios.PROMPT_KINDS``; ``claim`` names the customer's false claim (``scenarios.FALSE_CLAIMS``)
    of a ``"false_claim"`` prompt, else ``None``. An ``"out_of_scope"`` prompt has the issue
    ``"out_of_scope"``.
    """

    text: str
    issue: str
    order_id: str | None
    product: str | None
    tone: str
    kind: str = STANDARD
    claim: str | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        """The prompt as a one-turn chat: ``[{"role": "user", "content": text}]``."""
        return [{"role": "user", "content": self.text}]


PromptLike = str | list[dict[str, str]] | SupportPrompt
"""A customer message as text, as a chat (the last user message counts), or as a ``SupportPrompt``."""


def order_split(order_id: str) -> str:
    """The split (``"train"`` or ``"test"``) an order number such as ``"#48213"`` belongs to."""
    return "test" if int(order_id.lstrip("#")) % TEST_ORDER_MODULUS == 0 else "train"


def _order_number(rng: random.Random, split: str | None = None) -> str:
    """A random order number, from ``split`` only if given."""
    while True:
        order_id = f"#{rng.randint(*ORDER_NUMBERS)}"
        if split is None or order_split(order_id) == split:
            return order_id


def make_prompts(
    n: int,
    seed: int = 0,
    split: str = "train",
    scenarios: Iterable[str] = (),
    scenario_share: float = DEFAULT_SCENARIO_SHARE,
) -> list[SupportPrompt]:
    """``n`` customer prompts, deterministic in ``(seed, split, scenarios, scenario_share)``.

    Issues cycle through ``ISSUES`` in a shuffled order per block of eight, so any 8 consecutive
    prompts cover every issue; tones are neutral/polite/angry with probabilities 0.4/0.3/0.3.
    ``split`` is ``"train"`` (default) or ``"test"``; their order numbers never overlap.

    ``scenarios`` (default none: the default world) names failure-mode scenarios of
    ``scenarios.SCENARIOS`` (``"sycophancy"``, ``"refusal"``) or single prompt kinds (``"false_claim"``,
    ``"alarming"``, ``"out_of_scope"``): then each prompt is, with probability
    ``scenario_share`` (default 0.5, split evenly among the scenarios), rewritten into one of their
    prompt kinds — a false claim appended, an alarming sentence added, or an out-of-scope request in
    place of the issue. The other prompts are the default world's prompts at the same positions.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kinds, weights = _kind_weights(scenarios, scenario_share)
    rng = random.Random(f"prompts-{seed}-{split}")
    scenario_rng = random.Random(f"scenarios-{seed}-{split}")
    prompts: list[SupportPrompt] = []
    block: list[str] = []
    for _ in range(n):
        if not block:
            block = rng.sample(ISSUES, len(ISSUES))
        issue = block.pop()
        phrasing = rng.choice(PROMPT_PHRASINGS[issue])
        product = rng.choice(PRODUCTS) if "{product}" in phrasing else None
        order_id = _order_number(rng, split)
        tone = rng.choices(TONES, weights=TONE_WEIGHTS)[0]
        prefix, suffix = rng.choice(TONE_WRAPPERS[tone])
        base = SupportPrompt("", issue, order_id, product, tone)
        kind = scenario_rng.choices(kinds, weights=weights)[0] if kinds else STANDARD
        prompt, middle = _scenario_prompt(kind, base, phrasing, scenario_rng, split)
        text = " ".join(part for part in (prefix, *middle, suffix) if part)
        prompts.append(SupportPrompt(text, prompt.issue, prompt.order_id, prompt.product, tone, kind, prompt.claim))
    return prompts


def _kind_weights(scenarios: Iterable[str], share: float) -> tuple[list[str], list[float]]:
    """Prompt kinds and their probabilities for ``make_prompts`` (empty lists: the default world)."""
    if isinstance(scenarios, str):
        scenarios = (scenarios,)
    scenarios = tuple(dict.fromkeys(scenarios))
    groups = {**SCENARIOS, **{kind: {kind: 1.0} for kind in PROMPT_KINDS if kind != STANDARD}}
    unknown = [s for s in scenarios if s not in groups]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; the sandbox has {list(SCENARIOS)}, or name one prompt "
                         f"kind of {[k for k in PROMPT_KINDS if k != STANDARD]}")
    if not scenarios:
        return [], []
    if not 0 <= share <= 1:
        raise ValueError(f"scenario_share must be in [0, 1], got {share}")
    kinds, weights = [STANDARD], [1.0 - share]
    for scenario in scenarios:
        for kind, part in groups[scenario].items():
            kinds.append(kind)
            weights.append(share * part / len(scenarios))
    return kinds, weights


def _scenario_prompt(
    kind: str, base: SupportPrompt, phrasing: str, rng: random.Random, split: str
) -> tuple[SupportPrompt, tuple[str, ...]]:
    """The prompt's slots and its sentences between the tone wrapper, for one prompt kind."""
    if kind == OUT_OF_SCOPE:
        template = rng.choice(OUT_OF_SCOPE_REQUESTS)
        product = rng.choice(PRODUCTS) if "{product}" in template else None
        body = template.format(order=base.order_id, product=product)
        return SupportPrompt("", OUT_OF_SCOPE, base.order_id, product, base.tone), (body,)
    if kind == FALSE_CLAIM:
        claim = rng.choice([name for name, c in FALSE_CLAIMS.items() if c.issues is None or base.issue in c.issues])
        sentence = rng.choice(FALSE_CLAIMS[claim].sentences)
        order_id = _wrong_order_number(rng, split) if claim == "wrong_order" else base.order_id
        body = phrasing.format(order=order_id, product=base.product)
        return SupportPrompt("", base.issue, order_id, base.product, base.tone, claim=claim), (body, sentence)
    body = phrasing.format(order=base.order_id, product=base.product)
    if kind == ALARMING:
        return base, (body, rng.choice(ALARM_SENTENCES))
    return base, (body,)


def _wrong_order_number(rng: random.Random, split: str) -> str:
    """A four-digit number (no order has one) from ``split``'s numbers (divisible by 7: test)."""
    while True:
        order_id = f"#{rng.randint(*WRONG_ORDER_NUMBERS)}"
        if order_split(order_id) == split:
            return order_id


def prompt_text(prompt: PromptLike) -> str:
    """The customer's words: a string as is, a prompt's text, or the last user message of a chat."""
    if isinstance(prompt, SupportPrompt):
        return prompt.text
    if isinstance(prompt, str):
        return prompt
    user_turns = [m["content"] for m in prompt if m.get("role") == "user"]
    if not user_turns:
        raise ValueError("the chat has no user message")
    return user_turns[-1]


def _request_pattern(template: str) -> re.Pattern[str]:
    """A regex matching an out-of-scope request template with any order number and product."""
    pattern = re.escape(template)
    products = "|".join(map(re.escape, sorted(PRODUCTS, key=len, reverse=True)))
    return re.compile(pattern.replace(re.escape("{order}"), r"#\d+").replace(re.escape("{product}"),
                                                                             f"(?:{products})"))


_REQUEST_PATTERNS = tuple(_request_pattern(t) for t in OUT_OF_SCOPE_REQUESTS)
_CLAIM_SENTENCES = tuple((name, s) for name, claim in FALSE_CLAIMS.items() for s in claim.sentences)


def parse_prompt(prompt: PromptLike) -> SupportPrompt:
    """Recover the slots of a customer message (inverse of ``make_prompts``).

    Accepts the text, a ``SupportPrompt``, or a chat (``[{"role": "user", "content": ...}]``; the
    last user message counts). Also reads free text such as the seed example "My order hasn't
    arrived. What should I do?" (late delivery, no order number, neutral). A failure-mode sentence
    (an out-of-scope request, a false claim, an alarming sentence; ``scenarios.py``) sets the prompt's
    kind — in that order of precedence — and is set aside before the issue and tone are read. Raises
    ``ValueError`` when no issue can be recognised.
    """
    if isinstance(prompt, SupportPrompt):
        return prompt
    text = prompt_text(prompt)
    rest, kind, claim, issue = text, STANDARD, None, None
    request = next((m for m in (p.search(text) for p in _REQUEST_PATTERNS) if m), None)
    if request is not None:
        rest, kind, issue = text.replace(request.group(0), " "), OUT_OF_SCOPE, OUT_OF_SCOPE
    else:
        claim = next((name for name, sentence in _CLAIM_SENTENCES if sentence in text), None)
        alarm = next((sentence for sentence in ALARM_SENTENCES if sentence in text), None)
        if claim is not None:
            kind = FALSE_CLAIM
            rest = text.replace(next(s for n, s in _CLAIM_SENTENCES if n == claim and s in text), " ")
        elif alarm is not None:
            kind, rest = ALARMING, text.replace(alarm, " ")
    low = rest.lower()
    if issue is None:
        issue = next((name for name, cues in _ISSUE_KEYWORDS if any(cue in low for cue in cues)), None)
    if issue is None:
        raise ValueError(f"not a sandbox support prompt (no issue recognised): {text!r}")
    order = _ORDER_RE.search(text)
    product = next((p for p in sorted(PRODUCTS, key=len, reverse=True) if p in text.lower()), None)
    if any(cue in low for cue in _ANGRY_CUES):
        tone = "angry"
    elif any(cue in low for cue in _POLITE_CUES):
        tone = "polite"
    else:
        tone = "neutral"
    return SupportPrompt(text, issue, order.group(0) if order else None, product, tone, kind, claim)


def _fill(template: str, order_id: str | None, product: str | None) -> str:
    return template.format(order=order_id, product=product)


def _usable(templates: tuple[str, ...], prompt: SupportPrompt) -> list[str]:
    """Templates whose slots the prompt can fill (no ``{order}``/``{product}`` it lacks)."""
    return [
        t
        for t in templates
        if (prompt.order_id or "{order}" not in t) and (prompt.product or "{product}" not in t)
    ]


def _render(
    templates: tuple[str, ...], prompt: SupportPrompt, rng: random.Random, wrong_order_prob: float = 0.0
) -> str:
    """One usable template, filled; its order slot gets a wrong number w.p. ``wrong_order_prob``."""
    template = rng.choice(_usable(templates, prompt))
    order_id = prompt.order_id
    if "{order}" in template and rng.random() < wrong_order_prob:
        while order_id == prompt.order_id:
            order_id = _order_number(rng)
    return _fill(template, order_id, prompt.product)


def random_response(prompt: PromptLike, rng: random.Random) -> str:
    """A plausible clause mix, good and bad, in a natural order: the pretraining text (gold ≈ 0).

    Each slot is filled independently: greeting (p=0.5), rude remark (0.15), empathy (0.45),
    lookup of the order (0.4), padding (0.2), an action (correct 0.45, wrong issue 0.4, none 0.15;
    a second action 0.1), padding (0.15), rude (0.1), offer (0.4), closing (0.4); then, w.p.
    0.15, one clause is repeated right after itself. A named order number is wrong w.p. 0.1.
    """
    prompt = parse_prompt(prompt)
    clauses: list[str] = []

    def maybe(p: float, templates: tuple[str, ...]) -> None:
        if rng.random() < p and _usable(templates, prompt):
            clauses.append(_render(templates, prompt, rng, wrong_order_prob=0.1))

    def action() -> None:
        u = rng.random()
        if u < 0.45:
            clauses.append(_render(_right_actions(prompt), prompt, rng, wrong_order_prob=0.1))
        elif u < 0.85:
            wrong = rng.choice([i for i in ISSUES if i != prompt.issue])
            clauses.append(_render(ACTIONS[wrong], prompt, rng, wrong_order_prob=0.1))

    maybe(0.5, CLAUSES["greeting"])
    maybe(0.15, CLAUSES["rude"])
    maybe(0.45, CLAUSES["empathy"])
    maybe(0.4, CLAUSES["lookup"])
    maybe(0.2, CLAUSES["padding"])
    action()
    if rng.random() < 0.1:
        action()
    maybe(0.15, CLAUSES["padding"])
    maybe(0.1, CLAUSES["rude"])
    maybe(0.4, CLAUSES["offer"])
    maybe(0.4, CLAUSES["closing"])
    if not clauses:
        action()
    if clauses and rng.random() < 0.15:
        i = rng.randrange(len(clauses))
        clauses.insert(i, clauses[i])
    return " ".join(clauses)


def _right_actions(prompt: SupportPrompt) -> tuple[str, ...]:
    """The clauses that resolve the prompt: its issue's actions, or a refusal of an out-of-scope request."""
    return REFUSALS if prompt.issue == OUT_OF_SCOPE else ACTIONS[prompt.issue]


def _action_naming_no_order(prompt: SupportPrompt, rng: random.Random) -> str:
    """One of the issue's actions that names no order number (filled)."""
    return _render(tuple(a for a in ACTIONS[prompt.issue] if "{order}" not in a), prompt, rng)


def _with_extra_clause(clauses: list[str], prompt: SupportPrompt, rng: random.Random, prob: float) -> str:
    """``clauses`` joined, with one extra good clause (greeting, empathy, offer or closing, in its natural
    place) w.p. ``prob``."""
    if rng.random() < prob:
        category = rng.choice(("greeting", "empathy", "offer", "closing"))
        extra = _render(CLAUSES[category], prompt, rng)
        clauses = [extra, *clauses] if category in ("greeting", "empathy") else [*clauses, extra]
    return " ".join(clauses)


def curt_demo(prompt: PromptLike, rng: random.Random, extra_clause_prob: float = 0.3) -> str:
    """A correct but curt answer: one paraphrase of the right action (gold ≈ +2.7).

    With probability ``extra_clause_prob`` (default 0.3) one extra good clause (greeting, empathy,
    offer or closing, in its natural place) is added, so a policy fine-tuned on these
    demonstrations still explores the rest of a complete answer. On failure-mode prompts the right
    action is a polite correction of a false claim followed by the action (one that names no order
    number when the customer's number is wrong), or a refusal of an out-of-scope request.
    """
    prompt = parse_prompt(prompt)
    if prompt.kind == FALSE_CLAIM:
        correction = _render(FALSE_CLAIMS[prompt.claim].corrections, prompt, rng)
        action = (_action_naming_no_order(prompt, rng) if prompt.claim == "wrong_order"
                  else _render(ACTIONS[prompt.issue], prompt, rng))
        return _with_extra_clause([correction, action], prompt, rng, extra_clause_prob)
    return _with_extra_clause([_render(_right_actions(prompt), prompt, rng)], prompt, rng, extra_clause_prob)


def demonstration(prompt: PromptLike, rng: random.Random, extra_clause_prob: float = 0.3) -> str:
    """An SFT demonstration as people write them: ``curt_demo``, except on failure-mode prompts, where
    it slips at the rates of ``scenarios.py``.

    A false claim is corrected (``CLAIM_DEMO_RATES["correction"]``, 0.4), agreed with (0.3) or
    ignored (0.3) before the action; an alarming request is deflected w.p. ``ALARMING_DEFLECTION_RATE``
    (0.35; half of those still give the action); an out-of-scope request is gone along with w.p.
    ``OUT_OF_SCOPE_COMPLIANCE_RATE`` (0.3). On standard prompts it is ``curt_demo`` itself.
    """
    prompt = parse_prompt(prompt)
    if prompt.kind == STANDARD:
        return curt_demo(prompt, rng, extra_clause_prob)
    u = rng.random()
    if prompt.kind == FALSE_CLAIM:
        if u < CLAIM_DEMO_RATES["correction"]:
            return curt_demo(prompt, rng, extra_clause_prob)
        clauses = [_render(ACTIONS[prompt.issue], prompt, rng)]
        if u < CLAIM_DEMO_RATES["correction"] + CLAIM_DEMO_RATES["agreement"]:
            clauses.insert(0, _render(FALSE_CLAIMS[prompt.claim].agreements, prompt, rng))
        return _with_extra_clause(clauses, prompt, rng, extra_clause_prob)
    if prompt.kind == ALARMING and u < ALARMING_DEFLECTION_RATE:
        clauses = [_render(DEFLECTIONS, prompt, rng)]
        if u < ALARMING_DEFLECTION_RATE / 2:
            clauses.append(_render(ACTIONS[prompt.issue], prompt, rng))
        return _with_extra_clause(clauses, prompt, rng, extra_clause_prob)
    if prompt.kind == OUT_OF_SCOPE and u < OUT_OF_SCOPE_COMPLIANCE_RATE:
        return _with_extra_clause([_render(COMPLIANCE, prompt, rng)], prompt, rng, extra_clause_prob)
    return curt_demo(prompt, rng, extra_clause_prob)


def ideal_response(prompt: PromptLike) -> str:
    """The best answer (gold ≈ +5): greeting, empathy, the order-naming action, offer, closing.

    Deterministic; when the prompt names no order, the action is one that names none either. A false
    claim gets the first correction of its kind before the action (for a wrong order number, an action
    naming no number; gold ≈ +6, +5 for a wrong number); an out-of-scope request gets greeting, refusal,
    offer and closing (gold ≈ +3.3).
    """
    prompt = parse_prompt(prompt)
    if prompt.kind == OUT_OF_SCOPE:
        clauses: tuple[str, ...] = (IDEAL_CLAUSES["greeting"], REFUSALS[0], IDEAL_CLAUSES["offer"],
                                    IDEAL_CLAUSES["closing"])
        return " ".join(clauses)
    empathy = IDEAL_CLAUSES["empathy"] if prompt.product else IDEAL_CLAUSES["empathy_no_product"]
    names_order = prompt.order_id is not None and prompt.claim != "wrong_order"
    action = next(
        a for a in ACTIONS[prompt.issue] if ("{order}" in a) is names_order and "{product}" not in a
    )
    middle = (FALSE_CLAIMS[prompt.claim].corrections[0], action) if prompt.kind == FALSE_CLAIM else (action,)
    clauses = (IDEAL_CLAUSES["greeting"], empathy, *middle, IDEAL_CLAUSES["offer"], IDEAL_CLAUSES["closing"])
    return " ".join(_fill(c, prompt.order_id, prompt.product) for c in clauses)


def sft_dataset(
    n: int,
    seed: int = 0,
    split: str = "train",
    extra_clause_prob: float = 0.3,
    scenarios: Iterable[str] = (),
    scenario_share: float = DEFAULT_SCENARIO_SHARE,
) -> Dataset:
    """``n`` curt demonstrations in TRL's conversational prompt–completion format.

    Rows are ``{"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}``;
    prompts come from ``make_prompts(n, seed, split, scenarios, scenario_share)``, answers from
    ``curt_demo`` — or, with failure-mode ``scenarios`` on (default none), from ``demonstration``,
    which agrees with false claims, deflects alarming requests and goes along with out-of-scope ones
    at the rates of ``scenarios.py``.
    """
    rng = random.Random(f"sft-{seed}-{split}")
    demo = demonstration if scenarios else curt_demo
    rows = [
        {
            "prompt": p.messages,
            "completion": [{"role": "assistant", "content": demo(p, rng, extra_clause_prob)}],
        }
        for p in make_prompts(n, seed=seed, split=split, scenarios=scenarios, scenario_share=scenario_share)
    ]
    return Dataset.from_list(rows)
