"""One way to check a config's fields: each rule next to its message, the first broken one named with its value."""

from __future__ import annotations

from collections.abc import Mapping


def check_fields(config: object, checks: Mapping[str, tuple[bool, str]]) -> None:
    """Raise a ValueError naming the first field of `config` whose check failed, as `PPOConfig.gamma=1.5: must be
    in (0, 1]`.

    `checks` maps a field's name to (whether its value is acceptable, what it must be), in the order to report them.
    """
    for name, (ok, rule) in checks.items():
        if not ok:
            raise ValueError(f"{type(config).__name__}.{name}={getattr(config, name)!r}: {rule}")
