"""The few names every layer shares: what a prompt is, and the name of the offline sandbox world."""

from __future__ import annotations

from typing import TypeAlias

SANDBOX = "sandbox"
"""Where a model, prompts, pairs or probes are expected, this name picks the offline sandbox world's."""

Messages: TypeAlias = list[dict[str, str]]
"""Chat messages: `{"role": ..., "content": ...}` dicts."""

Prompt: TypeAlias = str | Messages
"""A prompt: the text of one user turn, or chat messages ending with a user turn."""
