"""A conversation as a prompt for a character model, and where the model's reply ends.

A character model knows no roles or turns, only the layout of the text it was trained on. A
:class:`ChatTemplate` lays each message out as that text would (its ``message`` pattern), opens
the reply (``reply``) and ends the reply where the pattern ends a message (its ``stop``). The
default suits prose: each message's content followed by a blank line, and the reply stops at a
blank line. A dialogue corpus such as Tiny Shakespeare (``NAME:`` on a line, then the speech,
then a blank line) suits ``"{name}:\\n{content}\\n\\n"`` with a reply such as ``"JULIET:\\n"``.

Decisions, the same for every way in (``docs/serving-chat.md``):

- Roles are OpenAI's ``system``, ``developer``, ``user`` and ``assistant``; any other role is
  refused. A system (or developer) message is laid out like any other, where it stands: for a
  character model it is text that sets the scene.
- A message with empty content adds nothing (so it cannot add a blank turn).
- A conversation of no messages is refused; one whose messages are all empty gives the reply
  alone, which starts as a sample with an empty prime does.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from textgen.errors import TextgenError

ROLES = ("system", "developer", "user", "assistant")
FIELDS = ("role", "name", "content")  # what a message pattern may name
DEFAULT_MESSAGE = "{content}\n\n"
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


class ChatMessage(NamedTuple):
    """One message: ``role``, its text, and an optional speaker ``name`` (else the role)."""

    role: str
    content: str
    name: str | None = None


class ChatPrompt(NamedTuple):
    """A rendered conversation: the prompt to continue, and the string that ends the reply."""

    prompt: str
    stop: str | None


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes a prompt, and where the reply ends.

    Attributes:
        message: each message's layout, with ``{content}`` once and optionally ``{role}`` and
            ``{name}`` (the message's ``name``, else its role); ``{{`` and ``}}`` are braces.
        reply: the text after the conversation that opens the reply. None: ``message`` up to
            its ``{content}``, laid out for an assistant (``""`` for the default).

    The reply stops where ``message`` puts text after ``{content}`` (a blank line for the
    default); a pattern that ends with ``{content}`` sets no stop.
    """

    message: str = DEFAULT_MESSAGE
    reply: str | None = None

    def __post_init__(self) -> None:
        try:
            parts = list(string.Formatter().parse(self.message))
        except ValueError as err:
            raise TextgenError(f"chat template {self.message!r}: {err}") from None
        named = [field for _, field, _, _ in parts if field is not None]
        unknown = [field for field in named if field not in FIELDS]
        if unknown:
            raise TextgenError(
                f"chat template {self.message!r} names {{{unknown[0]}}}; it may name "
                "{role}, {name} and {content} (write {{ and }} for braces)"
            )
        if any(spec or conversion for _, field, spec, conversion in parts if field):
            raise TextgenError(f"chat template {self.message!r}: fields take no format spec")
        if named.count("content") != 1:
            raise TextgenError(f"chat template {self.message!r} must hold {{content}} once")

    @classmethod
    def from_options(cls, message: str | None = None, reply: str | None = None) -> ChatTemplate:
        """A template from command-line text, where ``\\n``, ``\\t`` and ``\\\\`` are escapes."""
        return cls(
            DEFAULT_MESSAGE if message is None else unescape(message),
            None if reply is None else unescape(reply),
        )

    def _halves(self, role: str, name: str | None) -> tuple[str, str]:
        # The text before and after {content}, with {role} and {name} filled in.
        marker = "\0content\0"
        whole = self.message.format(role=role, name=name or role, content=marker)
        before, after = whole.split(marker)
        return before, after

    @property
    def reply_prefix(self) -> str:
        """The text that opens the reply."""
        return self._halves("assistant", None)[0] if self.reply is None else self.reply

    @property
    def stop(self) -> str | None:
        """The string that ends the reply (what follows an assistant's content), or None."""
        return self._halves("assistant", None)[1] or None

    def render(self, messages: Sequence[ChatMessage]) -> ChatPrompt:
        """The prompt for ``messages`` (checked as the module says) and the reply's stop.

        Raises:
            TextgenError: no messages, or a message with an unknown role.
        """
        if not messages:
            raise TextgenError("messages must hold at least one message")
        parts = []
        for i, message in enumerate(messages):
            if message.role not in ROLES:
                raise TextgenError(
                    f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message.role!r}"
                )
            if message.content:
                before, after = self._halves(message.role, message.name)
                parts.append(before + message.content + after)
        return ChatPrompt("".join(parts) + self.reply_prefix, self.stop)


def unescape(text: str) -> str:
    """``text`` with ``\\n``, ``\\t`` and ``\\\\`` turned into a newline, a tab and a backslash
    (for templates typed on a command line); any other backslash stays as it is."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)
