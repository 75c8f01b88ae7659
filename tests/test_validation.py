"""`runtime.validation.check_fields`: the first broken rule is named with its field's value and its message."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rlhf_widgets.runtime.validation import check_fields


@dataclass
class Knobs:
    rate: float = 0.1
    mode: str = "a"


def rules(knobs: Knobs) -> dict[str, tuple[bool, str]]:
    return {"rate": (0 < knobs.rate <= 1, "must be in (0, 1]"),
            "mode": (knobs.mode in ("a", "b"), "must be 'a' or 'b'")}


def test_a_config_that_keeps_every_rule_passes() -> None:
    check_fields(Knobs(), rules(Knobs()))


@pytest.mark.parametrize(("knobs", "message"), [
    (Knobs(rate=1.5), "Knobs.rate=1.5: must be in (0, 1]"),
    (Knobs(mode="c"), "Knobs.mode='c': must be 'a' or 'b'"),
    (Knobs(rate=0.0, mode="c"), "Knobs.rate=0.0: must be in (0, 1]"),  # the first broken rule, in the given order
])
def test_the_first_broken_rule_is_named_with_its_value(knobs: Knobs, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        check_fields(knobs, rules(knobs))
    assert str(raised.value) == message
