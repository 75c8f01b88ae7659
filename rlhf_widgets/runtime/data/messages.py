"""Message helpers: a prompt as chat messages, the last user turn, a response's text, and its length in words."""

from __future__ import annotations


def as_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A prompt as chat messages: a string becomes one user message; a message list is copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def last_user_content(prompt: str | list[dict[str, str]]) -> str:
    """The text of the last user message (a string prompt is returned as is)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message["content"]
    raise ValueError("prompt has no user message")


def words(text: str) -> int:
    """Words in a response (whitespace-separated), the length unit of the tables."""
    return len(text.split())


def message_text(response: str | list[dict[str, str]]) -> str:
    """The text of a response: a string as is; of a message list (a conversational completion), the last
    message's content."""
    if isinstance(response, str):
        return response
    if not response:
        raise ValueError("an empty message list has no text")
    return response[-1]["content"]
