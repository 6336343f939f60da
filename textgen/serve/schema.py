"""The server's request and response bodies, as OpenAI's API has them, and its error shape.

A request's fields are checked by pydantic on arrival and become the library's sampling options
in one call (``SamplingRequest.to_sampling_options``); every error is answered in OpenAI's shape
(``ApiError``).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from textgen.sample.chat import ROLES, ChatMessage
from textgen.sample.options import SamplingOptions


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error",
        param: str | None = None, code: str | None = None, headers: dict | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


# -- request and response shapes -------------------------------------------------------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields completions and chat completions share, checked the same way."""

    model_config = ConfigDict(extra="ignore")  # OpenAI fields with no meaning here are ignored

    model: str
    max_tokens: int | None = Field(16, ge=0, description="characters per choice")
    temperature: float | None = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1)
    # n and best_of are bounded by the server's --max-streams, checked with the prompts' count.
    n: int | None = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def to_sampling_options(
        self, extra_stop: tuple[str, ...] = (), drop_unknown: bool = False
    ) -> SamplingOptions:
        """The request's draw as the library's one checked form; ``extra_stop`` (the server's
        own, such as the chat template's) joins the request's at most 4 stop strings."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise ApiError(400, "at most 4 stop strings", param="stop")
        if "" in stop:
            raise ApiError(400, "a stop string must not be empty", param="stop")
        return SamplingOptions(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k,
            top_p=None if self.top_p is None or self.top_p >= 1 else self.top_p,
            seed=self.seed,
            drop_unknown=drop_unknown,
            stop=(*stop, *extra_stop),
        )


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``; fields as in OpenAI's API, plus ``top_k``."""

    prompt: str | list[str] = ""
    best_of: int | None = Field(None, ge=1, description="choices generated; n returned")
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=5)


class TextPart(BaseModel):
    """A part of a message's content; text is the only kind a character model reads."""

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    """A message of a conversation (``tool_calls`` and the like are ignored)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal[ROLES]  # type: ignore[valid-type]  # the library's roles, in the schema
    content: str | list[TextPart] | None = None
    name: str | None = None

    def message(self) -> ChatMessage:
        """The library's message: text parts joined, no content as empty."""
        content = self.content or ""
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return ChatMessage(self.role, content, self.name)


class ChatRequest(SamplingRequest):
    """``POST /v1/chat/completions``; the messages become a prompt through the chat template,
    and the rest is a completion's (``max_completion_tokens``, when given, is ``max_tokens``)."""

    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, description="as max_tokens")
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=5, description="only with logprobs")

    def completion(self, prompt: str) -> CompletionRequest:
        """The equivalent completion request (of fields already checked)."""
        shared = {name: getattr(self, name) for name in SamplingRequest.model_fields}
        if self.max_completion_tokens is not None:
            shared["max_tokens"] = self.max_completion_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return CompletionRequest.model_construct(**shared, prompt=prompt, logprobs=logprobs)


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class Choice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: str = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]

    @classmethod
    def of(cls, logprobs: Logprobs) -> ChatLogprobs:
        """Completion log-probabilities in the chat shape."""

        def top(token: str, logprob: float) -> TopLogprob:
            return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))

        return cls(
            content=[
                TokenLogprob(
                    **top(token, logprob).model_dump(),
                    top_logprobs=[top(t, lp) for t, lp in alternatives.items()],
                )
                for token, logprob, alternatives in zip(
                    logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs
                )
            ]
        )


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "textgen"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    streams: dict[str, int] = {}
    blas_threads: int | None = None  # numpy's BLAS threads when they follow the idle cores


class RunDetails(BaseModel):
    """What the page shows about a run."""

    id: str
    corpus: str | None
    characters: int | None
    parameters: dict[str, Any]
    epochs: int
    best_val_loss: float | None
    history: list[dict[str, float | None]]


def error_responses(*statuses: int) -> dict:
    """The OpenAPI ``responses`` of a route that can answer these error statuses."""
    return {s: {"model": ErrorResponse} for s in statuses}
