"""What one server accepts: ``Limits``, kept apart from the HTTP layer so that the command line
takes its flags' defaults from it without importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one server accepts; each is a ``textgen serve`` flag."""

    max_streams: int = 128  # rows (choices) generated at once, then 429; bounds n and best_of
    max_tokens: int = 4096  # characters per choice
    max_prompt: int = 8192  # characters per prompt
    max_body: int = 1_000_000  # bytes per request body, then 413
    request_timeout: float = 300.0  # seconds per request, then the choices end as "length"
