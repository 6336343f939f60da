"""The HTTP layer: OpenAI's completions and chat completions over
:mod:`textgen.serve.batching`, and the page.

Every route is a few lines over an :class:`~textgen.serve.engine_process.EngineProcess` (one per
served run: its scheduler steps in a process of its own); the bodies it reads and writes are
:mod:`textgen.serve.schema`'s. FastAPI and uvicorn come with the ``serve`` extra and are imported
only in ``serve/``. The server keeps no state between requests, so several processes can run
behind any HTTP load balancer.

Decisions (see also docs/serving.md):

- A token is a character: ``max_tokens`` and ``usage`` count characters.
- Bad values are answered 400 (as OpenAI does), in OpenAI's error shape.
- ``temperature`` lies in [0, 2] as in OpenAI's API; ``seed`` is any integer from 0 up. (An upper
  bound of 2**63 read as a JSON number rounds, so clients' schema tools disagreed on its edge.)
- ``logprobs`` are the model's own log-probabilities (temperature 1), for generated characters
  only (also with ``echo``).
- ``best_of`` (at least ``n``) generates ``best_of`` choices per prompt as extra rows of the
  batch, choice i drawing from ``(seed, i)`` as usual, and returns the ``n`` with the highest
  mean log-probability per character (``Sampler.scored_batch``), best first; ``usage`` counts
  every generated character. Like OpenAI, it cannot be streamed when larger than ``n``.
- A request that runs past the time limit ends with ``finish_reason: "length"``.
- A chat request is a completion: its messages become the prompt through the server's
  :class:`~textgen.sample.chat.ChatTemplate`, whose stop joins the request's; it then takes the
  completions route's path (``docs/serving-chat.md``).
- An oversized body is read and dropped (up to ``DRAIN_LIMIT``) before its 413, so that clients
  which send all of it before reading get the answer.
- CORS headers only for the origins given (``--allow-origin``); none by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from textgen import __version__
from textgen import run as runs
from textgen.errors import TextgenError
from textgen.sample.chat import ChatTemplate
from textgen.sample.options import best_of_rows
from textgen.serve.batching import Busy, Job, Piece
from textgen.serve.engine_process import EngineProcess, EngineStopped
from textgen.serve.inspect_route import add_inspect_routes
from textgen.serve.limits import Limits
from textgen.serve.schema import (
    ApiError,
    ChatChoice,
    ChatCompletion,
    ChatLogprobs,
    ChatMessageOut,
    ChatRequest,
    Choice,
    Completion,
    CompletionRequest,
    Health,
    Logprobs,
    ModelCard,
    ModelList,
    RunDetails,
    Usage,
    error_responses,
)

# Streamed text is sent at most every 20 ms per stream (the first character and the last piece
# at once), and less often the more streams run (1.5 ms per stream, at most 100 ms): the event
# loop's work per chunk shares the interpreter with the engine, and at 64 streams 96 ms gave
# about 4% more throughput than 64 ms (and twice that of 20 ms).
STREAM_FLUSH_SECONDS = (0.02, 0.0015, 0.1)


# -- the served runs -------------------------------------------------------------------------------
class Models:
    """The served runs, loaded in a background thread so that ``/health`` can answer meanwhile."""

    def __init__(
        self, run_dirs: list[Path], which: str, limits: Limits, adapt_blas_threads: bool = False
    ) -> None:
        self.run_dirs = {Path(d).resolve().name: runs.resolve_run(d) for d in run_dirs}
        self.which, self.limits = which, limits
        self.adapt_blas_threads = adapt_blas_threads
        self.schedulers: dict[str, EngineProcess] = {}
        self.ready = threading.Event()
        self.failure: str | None = None

    def load(self) -> None:
        """Load every run's weights and start its engine process."""
        from textgen.run import open_run

        try:
            for name, run_dir in self.run_dirs.items():
                self.schedulers[name] = EngineProcess(
                    open_run(run_dir, self.which), max_streams=self.limits.max_streams,
                    adapt_blas_threads=self.adapt_blas_threads,
                )  # fmt: skip
        except TextgenError as err:
            self.failure = str(err)
        except Exception as err:  # the server must not wait for a load that died
            self.failure = f"{type(err).__name__}: {err}"
        self.ready.set()

    @property
    def blas_threads(self) -> int | None:
        """The first engine's numpy BLAS threads while they follow the idle cores, else None."""
        return next((e.blas_threads for e in self.schedulers.values()), None)

    def get(self, name: str) -> EngineProcess:
        if not self.ready.is_set() or self.failure:
            raise ApiError(503, "the models are still loading", type="server_error", code="loading")
        if name not in self.schedulers:
            known = ", ".join(self.schedulers)
            raise ApiError(
                404, f"unknown model {name!r}; served: {known}", param="model",
                code="model_not_found",
            )  # fmt: skip
        return self.schedulers[name]

    def close(self) -> None:
        """End every running request (its streams finish) and stop the engines."""
        for scheduler in list(self.schedulers.values()):  # the load may still be adding
            scheduler.close()


def run_details(name: str, run_dir: Path) -> RunDetails:
    """The run's corpus, shape, progress and validation-loss history, from its files."""
    config = runs.read_config(run_dir)
    keys = ("epoch", "train_loss", "val_loss")
    history = [{key: _number(row.get(key)) for key in keys} for row in runs.read_history(run_dir)]
    losses = [h["val_loss"] for h in history if h["val_loss"] is not None]
    corpus = config.corpus
    return RunDetails(
        id=name,
        corpus=corpus.get("name") or corpus.get("source"),
        characters=corpus.get("characters"),
        parameters=dataclasses.asdict(config.model),
        epochs=len(history),
        best_val_loss=min(losses) if losses else None,
        history=history,
    )


def _number(value: str | None) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- the app ---------------------------------------------------------------------------------------
def create_app(
    run_dirs: list[Path],
    *,
    limits: Limits = Limits(),
    api_key: str | None = None,
    drop_unknown: bool = False,
    which: str = "best",
    adapt_blas_threads: bool = False,
    chat_template: ChatTemplate | None = None,
    allow_origins: Sequence[str] = (),
) -> FastAPI:
    """The FastAPI app serving ``run_dirs``; a model's id is its run directory's name.

    ``chat_template`` turns a chat request's messages into its prompt (None: the default).
    ``allow_origins``: the web origins (``https://host[:port]``, or ``*`` for any) whose pages
    may call the API from a browser; none by default, when the server sends no CORS headers.

    Each model's engine runs in a process of its own, started when the app starts up with
    ``multiprocessing``'s ``spawn``, which imports the main module again: a script that runs the
    app must start its server under ``if __name__ == "__main__":``.

    With ``adapt_blas_threads``, each engine process's numpy BLAS threads follow the idle cores,
    measured every two seconds by a thread of their own (``textgen.cores.AdaptiveBlasThreads``);
    ``/health`` shows the first engine's count.
    """
    models = Models(run_dirs, which, limits, adapt_blas_threads)

    async def lifespan(app: FastAPI):
        threading.Thread(target=models.load, name="textgen-load", daemon=True).start()
        yield
        models.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and this server works
    # offline. The schema itself is at /openapi.json.
    app = FastAPI(
        title="textgen", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.models = models
    app.add_middleware(_BodyLimit, max_body=limits.max_body)
    if allow_origins:
        # Outside the body limit, so that its 413 (and every error) reaches the page too. A
        # preflight is answered here, before the API key is asked for: it carries no key.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[check_origin(origin) for origin in allow_origins],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    _add_error_handlers(app)
    guarded = [Depends(_authorization(api_key))]
    _add_info_routes(app, models, guarded)
    _add_completion_routes(
        app, models, guarded, chat_template or ChatTemplate(), limits, drop_unknown
    )
    add_inspect_routes(
        app, models, dependencies=guarded, drop_unknown=drop_unknown, error=ApiError,
        responses=error_responses(400, 401, 404, 413, 503),
    )  # fmt: skip
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, FastAPI's and Starlette's too, answered in OpenAI's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return ApiError(400, f"the request body is not valid JSON ({reason})").response()
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = loc[0] if loc else None
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        return ApiError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return ApiError(err.status_code, str(err.detail), headers=err.headers).response()


def _authorization(api_key: str | None):
    """The dependency that asks for ``api_key`` as a bearer token (nothing when it is None)."""

    async def authorize(request: Request) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise ApiError(
                401, "missing or wrong API key; send Authorization: Bearer KEY",
                code="invalid_api_key",
            )  # fmt: skip

    return authorize


def _add_info_routes(app: FastAPI, models: Models, guarded: list) -> None:
    """The page, ``/health``, the model list and a run's details."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("textgen.serve").joinpath("page.html").read_text())

    @app.get("/health", response_model=Health, responses=error_responses(503))
    async def health():
        """200 when every model is loaded and its engine runs; 503 before, or once one stopped."""
        engines = list(models.schedulers.items())  # the load may still be adding
        failure = models.failure or next(
            (f"{name}: {e.failure}" for name, e in engines if e.failure), None
        )
        if not models.ready.is_set() or failure:
            status = "failed: " + failure if failure else "loading"
            return JSONResponse({"status": status, "streams": {}}, status_code=503)
        return Health(
            status="ok",
            streams={name: e.active_streams for name, e in engines},
            blas_threads=models.blas_threads,
        )

    @app.get(
        "/v1/models", response_model=ModelList, dependencies=guarded, responses=error_responses(401)
    )
    async def list_models():
        """The served runs, in OpenAI's list shape."""
        return ModelList(data=[_card(name, d) for name, d in models.run_dirs.items()])

    @app.get(
        "/v1/runs/{model}",
        response_model=RunDetails,
        dependencies=guarded,
        responses=error_responses(401, 404),
    )
    async def details(model: str):
        """A run's corpus, shape, progress and validation-loss curve (for the page)."""
        if model not in models.run_dirs:
            raise ApiError(404, f"unknown model {model!r}", param="model", code="model_not_found")
        return run_details(model, models.run_dirs[model])


def _add_completion_routes(
    app: FastAPI,
    models: Models,
    guarded: list,
    chat_template: ChatTemplate,
    limits: Limits,
    drop_unknown: bool,
) -> None:
    """OpenAI's completions and chat completions, both served by one ``answer``."""

    async def answer(body: CompletionRequest, request: Request, shape: _Shape, stop=()):
        """The one way a request is served, completion or chat; ``stop`` ends every choice
        besides the request's own stop strings (the chat template's)."""
        scheduler = models.get(body.model)
        jobs, prompts = _jobs(body, scheduler, limits, drop_unknown, stop)
        try:
            for job in jobs:
                scheduler.submit(job)
        except (Busy, EngineStopped) as err:
            for job in jobs:
                job.cancel()
            if isinstance(err, EngineStopped):
                raise ApiError(503, str(err), type="server_error", code="engine_stopped") from None
            raise ApiError(
                429, str(err), type="rate_limit_error", code="server_full",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        head = {"id": f"{shape.id_prefix}-{uuid.uuid4().hex}", "created": int(time.time())}
        head["model"] = body.model
        if body.stream:
            events = _stream(jobs, scheduler, prompts, body, head, shape)
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        done = await _complete(jobs, scheduler, prompts, body, head, request)
        return done if isinstance(done, JSONResponse) else shape.answer(done)

    answers = {
        200: {"content": {"text/event-stream": {}}},
        **error_responses(400, 401, 404, 413, 429, 503),
    }

    @app.post("/v1/completions", response_model=Completion, dependencies=guarded, responses=answers)
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI's completions: plain, or streamed as Server-Sent Events with ``stream``."""
        return await answer(body, request, TEXT)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        dependencies=guarded,
        responses=answers,
    )
    async def chat_completions(body: ChatRequest, request: Request):
        """OpenAI's chat completions: the messages become a prompt through the server's chat
        template (``--chat-template``), and the reply is that prompt's completion."""
        try:
            rendered = chat_template.render([m.message() for m in body.messages])
        except TextgenError as err:
            raise ApiError(400, str(err), param="messages") from None
        completion = body.completion(rendered.prompt)
        stop = () if rendered.stop is None else (rendered.stop,)
        try:
            return await answer(completion, request, CHAT, stop)
        except ApiError as err:
            if err.param == "prompt":  # the prompt is the conversation, laid out
                err.param = "messages"
            raise


def check_origin(origin: str) -> str:
    """``origin`` when it is a web origin (``scheme://host[:port]``) or ``*``.

    Raises:
        TextgenError: anything else; a browser sends its origin without a path or a trailing
            slash, so such a value would never match.
    """
    if origin == "*" or re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s?#]+", origin):
        return origin
    raise TextgenError(
        f"--allow-origin takes an origin such as https://example.com:8080 (scheme, host and "
        f"port, no path), or *; got {origin!r}"
    )


class _Shape:
    """How an answer is laid out: OpenAI's text completion (this class) or its chat shape."""

    id_prefix, chunk_object = "cmpl", "text_completion"

    def answer(self, completion: Completion) -> BaseModel:
        """The whole answer, from the completion of the request's prompt."""
        return completion

    def opening(self, index: int) -> dict | None:
        """A streamed choice's first chunk, before any text."""
        return None

    def chunk(self, index: int, text: str, finish: str | None, logprobs: Logprobs | None):
        """One choice of a streamed chunk: new text, its log-probabilities, why it ended."""
        lp = None if logprobs is None else logprobs.model_dump()
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": finish}


class _ChatShape(_Shape):
    id_prefix, chunk_object = "chatcmpl", "chat.completion.chunk"

    def answer(self, completion: Completion) -> ChatCompletion:
        choices = [
            ChatChoice(
                index=c.index, message=ChatMessageOut(content=c.text),
                logprobs=None if c.logprobs is None else ChatLogprobs.of(c.logprobs),
                finish_reason=c.finish_reason,
            )
            for c in completion.choices
        ]  # fmt: skip
        fields = completion.model_dump(include={"id", "created", "model"})
        return ChatCompletion(**fields, choices=choices, usage=completion.usage)

    def opening(self, index: int) -> dict:
        delta = {"role": "assistant", "content": ""}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}

    def chunk(self, index: int, text: str, finish: str | None, logprobs: Logprobs | None):
        lp = None if logprobs is None else ChatLogprobs.of(logprobs).model_dump()
        return {"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": finish}


TEXT, CHAT = _Shape(), _ChatShape()


def _card(name: str, run_dir: Path) -> ModelCard:
    try:
        created = int((run_dir / runs.CONFIG).stat().st_mtime)
    except OSError:
        created = 0
    return ModelCard(id=name, created=created)


def _jobs(
    body: CompletionRequest, scheduler: EngineProcess, limits: Limits, drop_unknown: bool,
    extra_stop: tuple[str, ...] = (),
):  # fmt: skip
    """Check a request against the limits and turn each prompt into a Job; ``extra_stop``
    (the server's own) joins the request's at most 4 stop strings."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise ApiError(400, "prompt must not be an empty list", param="prompt")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > limits.max_tokens:
        raise ApiError(
            400, f"max_tokens must be at most {limits.max_tokens}, got {max_tokens}",
            param="max_tokens",
        )  # fmt: skip
    n = body.n or 1
    try:
        rows = best_of_rows(n, body.best_of)
    except TextgenError as err:
        raise ApiError(400, str(err), param="best_of") from None
    if body.stream and rows > n:
        raise ApiError(400, "best_of larger than n cannot be streamed", param="best_of")
    if rows * len(prompts) > limits.max_streams:
        raise ApiError(
            400, f"best_of (or n) times the prompts must be at most {limits.max_streams}",
            param="best_of" if rows > n else "n",
        )  # fmt: skip
    if any(len(p) > limits.max_prompt for p in prompts):
        raise ApiError(
            400, f"a prompt may hold at most {limits.max_prompt} characters", param="prompt"
        )
    options = body.to_sampling_options(extra_stop, drop_unknown)
    jobs = []
    for prompt in prompts:
        try:
            ids = scheduler.prompt_ids(prompt, options.drop_unknown)
        except TextgenError as err:
            raise ApiError(400, str(err), param="prompt") from None
        jobs.append(
            Job(
                ids, options, n=rows, max_tokens=max_tokens, logprobs=body.logprobs,
                timeout=limits.request_timeout, score=rows > n,
            )
        )  # fmt: skip
    return jobs, prompts


async def _pieces(
    jobs: list[Job], scheduler: EngineProcess, poll: float | None = None
) -> AsyncIterator[list]:
    """``(job number, Piece)`` pairs as the engine delivers them, gathered for a while between
    deliveries (``STREAM_FLUSH_SECONDS``; the first at once); ``[]`` when ``poll`` s pass idle."""
    least, per_stream, most = STREAM_FLUSH_SECONDS
    loop = asyncio.get_running_loop()
    ready, ended = asyncio.Event(), asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(ready.set)

    def job_done() -> None:
        if all(job.done for job in jobs):  # called in the delivering thread as each job ends
            loop.call_soon_threadsafe(ended.set)

    for job in jobs:
        job.on_ready, job.on_done = wake, job_done
    while True:
        ready.clear()
        batch = [(p, piece) for p, job in enumerate(jobs) for piece in job.take(timeout=0)]
        if batch:
            yield batch
        if all(job.drained for job in jobs):
            return
        if batch and not ended.is_set():
            # Let pieces gather: waking per character would cost more than the engine. The
            # last pieces go out at once: waiting then would only delay the end of the answer.
            delay = min(most, max(least, per_stream * scheduler.active_streams))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), delay)
        try:
            await asyncio.wait_for(ready.wait(), poll)
        except TimeoutError:
            yield []


class _Choice:
    """Accumulates one choice's text, log-probabilities and finish reason."""

    def __init__(self, index: int, prefix: str, want_logprobs: bool) -> None:
        self.index, self.text, self.finish = index, prefix, None
        self.generated = 0
        self.score = 0.0  # set by the last piece of a scored (best-of) job
        self.logprobs = Logprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        self.want_logprobs = want_logprobs

    def add(self, piece: Piece) -> Logprobs | None:
        """Take a piece; returns the log-probabilities it brought (when asked for)."""
        new = None
        if self.want_logprobs:
            new = Logprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
            offset = len(self.text)
            for k, (char, logprob, top) in enumerate(piece.logprobs or []):
                for target in (self.logprobs, new):
                    target.tokens.append(char)
                    target.token_logprobs.append(logprob)
                    target.top_logprobs.append(top)
                    target.text_offset.append(offset + k)
        self.text += piece.text
        self.generated += len(piece.text)
        self.finish = piece.finish_reason or self.finish
        if piece.score is not None:
            self.score = piece.score
        return new


def _usage(prompts: list[str], choices: list[_Choice]) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(c.generated for c in choices)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
    )  # fmt: skip


async def _complete(jobs, scheduler, prompts, body, head, request: Request) -> Completion:
    """Wait for every choice of every prompt; cancel if the client goes away."""
    n, rows = body.n or 1, jobs[0].n  # rows: best_of where it is larger
    want = body.logprobs is not None
    choices = [
        _Choice(p * rows + i, prompts[p] if body.echo else "", want)
        for p in range(len(jobs))
        for i in range(rows)
    ]
    try:
        async for batch in _pieces(jobs, scheduler, poll=0.5):
            for p, piece in batch:
                choices[p * rows + piece.index].add(piece)
            if not batch and await request.is_disconnected():
                return JSONResponse({}, status_code=499)
    finally:
        for job in jobs:
            job.cancel()
    usage = _usage(prompts, choices)
    if rows > n:
        choices = _best(choices, rows, n)
    return Completion(
        **head,
        choices=[
            Choice(
                index=c.index, text=c.text, finish_reason=c.finish,
                logprobs=c.logprobs if want else None,
            )
            for c in choices
        ],
        usage=usage,
    )  # fmt: skip


def _best(choices: list[_Choice], rows: int, n: int) -> list[_Choice]:
    """Of each prompt's ``rows`` choices, the ``n`` best-scoring, best first, numbered anew."""
    best = []
    for first in range(0, len(choices), rows):
        ranked = sorted(choices[first : first + rows], key=lambda c: -c.score)
        best += ranked[:n]
    for index, choice in enumerate(best):
        choice.index = index
    return best


async def _stream(jobs, scheduler, prompts, body, head, shape: _Shape) -> AsyncIterator[str]:
    """Server-Sent Events: one chunk per choice with new text, then ``[DONE]``."""
    n = body.n or 1
    want = body.logprobs is not None
    choices = [_Choice(p * n + i, "", want) for p in range(len(jobs)) for i in range(n)]

    def event(*chunk_choices: dict, **extra) -> str:
        payload = {**head, "object": shape.chunk_object, "choices": list(chunk_choices), **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        for c in choices:
            if (opening := shape.opening(c.index)) is not None:
                yield event(opening)
        if body.echo:
            for c in choices:
                yield event(shape.chunk(c.index, prompts[c.index // n], None, None))
        async for batch in _pieces(jobs, scheduler):
            merged: dict[int, tuple] = {}
            for p, piece in batch:
                c = choices[p * n + piece.index]
                new = c.add(piece)
                text, lp, _ = merged.get(c.index, ("", None, None))
                if new is not None and lp is not None:
                    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                        getattr(lp, key).extend(getattr(new, key))
                else:
                    lp = lp or new
                merged[c.index] = (text + piece.text, lp, piece.finish_reason)
            for index, (text, lp, finish) in merged.items():
                yield event(shape.chunk(index, text, finish, lp))
        if body.stream_options is not None and body.stream_options.include_usage:
            yield event(usage=_usage(prompts, choices).model_dump())
        yield "data: [DONE]\n\n"
    finally:
        # The client went away or the stream ended: the rows leave the batch before the next step.
        for job in jobs:
            job.cancel()


class _BodyLimit:
    """Answer 413 to a request body larger than ``max_body`` bytes, declared or sent.

    The body is read and dropped (up to ``DRAIN_LIMIT`` bytes) before the answer goes out:
    a client that sends its whole body before reading (Python's ``urllib``, many scripts) would
    otherwise find the connection reset, its unread bytes still in flight, instead of the 413.
    A client that asked ``Expect: 100-continue`` has sent nothing yet and is answered at once.
    """

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        too_big = ApiError(
            413, f"the request body is larger than {self.max_body} bytes", code="request_too_large"
        )
        try:
            declared = headers.get(b"content-length")
            declared = None if declared is None else int(declared)
        except ValueError:
            return await ApiError(400, "bad Content-Length").response()(scope, receive, send)
        if declared is not None and declared > self.max_body:
            if declared <= DRAIN_LIMIT and headers.get(b"expect", b"").lower() != b"100-continue":
                await _drain(receive, declared)
            return await too_big.response()(scope, receive, send)
        seen = 0
        over = False  # the body passed max_body: the app's own answer is dropped for the 413

        async def limited():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_LIMIT - seen)
                    raise _TooBig
            return message

        async def unless_over(message):
            # FastAPI turns a failed body read into its own 400; the client gets the 413.
            if not over:
                await send(message)

        with contextlib.suppress(_TooBig):
            await self.app(scope, limited, unless_over)
        if over:
            await too_big.response()(scope, receive, send)


# The most an oversized body is read for its 413 to reach the client (see _BodyLimit); past it
# the connection is closed with the answer unread, as a flood deserves.
DRAIN_LIMIT = 64 * 1024 * 1024


async def _drain(receive, limit: int) -> None:
    """Read and drop a request's body until it ends, the client leaves or ``limit`` bytes."""
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _TooBig(Exception):
    pass


def serve(
    run_dirs: list[Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits = Limits(),
    api_key: str | None = None,
    drop_unknown: bool = False,
    which: str = "best",
    adapt_blas_threads: bool = False,
    chat_template: ChatTemplate | None = None,
    allow_origins: Sequence[str] = (),
) -> None:
    """Run the server until SIGTERM or Ctrl-C; in-flight streams end first, then it returns.

    ``adapt_blas_threads``, ``chat_template``, ``allow_origins``: see :func:`create_app`.
    Each model's engine starts as a process with ``multiprocessing``'s ``spawn``, which imports
    the caller's main module again: a script that calls this must do so under
    ``if __name__ == "__main__":``.
    """
    import uvicorn

    for run_dir in run_dirs:
        runs.read_config(run_dir)  # a missing or bad run fails here, in one line
        runs.weights_file(run_dir, which)
    names = [Path(d).resolve().name for d in run_dirs]
    if len(set(names)) != len(names):
        raise TextgenError(f"two runs share a directory name (the model id): {', '.join(names)}")
    app = create_app(
        run_dirs, limits=limits, api_key=api_key, drop_unknown=drop_unknown, which=which,
        adapt_blas_threads=adapt_blas_threads, chat_template=chat_template,
        allow_origins=allow_origins,
    )  # fmt: skip

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # End the running requests first, so their streams finish with [DONE].
            app.state.models.close()
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has shut down, which would make a clean
            # stop exit -15 (or print a KeyboardInterrupt); a requested stop exits 0.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5
    )
    Server(config).run()
