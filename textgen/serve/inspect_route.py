"""``POST /v1/inspect``: what a served model expects at every character of a text, and its cells.

The answer is :func:`textgen.sample.inspect_report.report_data`, the data of ``textgen inspect``'s
HTML report; the page's Inspect tab shows it with the same viewer, served here as
``/static/inspect.js`` and ``/static/inspect.css``. Each model gets its own
:class:`~textgen.sample.inspection.Inspector` (its own engine, apart from the scheduler's), loaded
at its first inspection; one inspection runs at a time. Features are the built-in ones: a regular
expression from a client could take exponential time, so user features stay on the command line.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from textgen.errors import TextgenError
from textgen.sample.inspect_report import report_data, viewer_asset
from textgen.sample.inspection import Inspector


class InspectRequest(BaseModel):
    """``POST /v1/inspect``."""

    model: str
    text: str = Field(description="read from a zero state; at most --max-prompt characters")
    layer: int | None = Field(None, description="from 0 at the input; default: the top layer")
    best: int = Field(5, ge=1, le=20, description="cells reported per feature")


class CellInfo(BaseModel):
    state: str = Field(description='"h" (hidden state) or "c" (LSTM cell state)')
    cell: int
    score: float = Field(description="Pearson's r of the activation with the feature")


class FeatureInfo(BaseModel):
    name: str
    description: str
    pattern: str | None
    binary: bool
    inside: int | None = Field(description="characters inside (binary features)")
    note: str | None = Field(description="why no cell was ranked")
    best: list[CellInfo]


class InspectResponse(BaseModel):
    """Per character (in ``text``'s order): ``prob``, ``surprise`` (−ln prob) and ``top`` (the
    five likeliest guesses, ``[char, probability]``); the first character's are null and [].
    ``activations`` holds the ranked cells' values after each character, keyed ``h12``/``c213``.
    """

    model: str | None
    cell: str
    layer: int
    layers: int
    units: int
    states: list[str]
    characters: int
    text: str
    prob: list[float | None]
    surprise: list[float | None]
    top: list[list[list[str | float]]]
    mean_surprise: float | None
    features: list[FeatureInfo]
    activations: dict[str, list[float]]


def add_inspect_routes(
    app: FastAPI, models, *, dependencies: list, drop_unknown: bool, error: type, responses: dict
) -> None:
    """Add ``POST /v1/inspect`` and the viewer's files to ``app``.

    ``models`` are the app's runs (``textgen.serve.app.Models``); ``error`` is the app's error
    class (status, message, param=...), and ``responses`` its error answers for the schema.
    """
    inspectors: dict[str, Inspector] = {}
    lock = threading.Lock()

    @app.post(
        "/v1/inspect",
        response_model=InspectResponse,
        dependencies=dependencies,
        responses=responses,
    )
    def inspect(body: InspectRequest) -> Any:
        """A text read through the model: each character's probability and top 5 guesses, and
        the cells of a layer that best follow quotes, brackets, line position, indentation and
        words, with their activations. The same data as ``textgen inspect --format html``."""
        models.get(body.model)  # 503 while loading, 404 for a model not served
        longest = models.limits.max_prompt
        if len(body.text) > longest:
            raise error(400, f"text may hold at most {longest} characters", param="text")
        with lock:
            try:
                if body.model not in inspectors:
                    inspectors[body.model] = Inspector.from_run(
                        models.run_dirs[body.model], models.which
                    )
                data = report_data(
                    inspectors[body.model], body.text, name=body.model, layer=body.layer,
                    best=body.best, drop_unknown=drop_unknown,
                )  # fmt: skip
            except TextgenError as err:
                param = "layer" if "--layer" in str(err) else "text"
                raise error(400, str(err), param=param) from None
        return JSONResponse(data)

    for name, media in (("inspect.js", "text/javascript"), ("inspect.css", "text/css")):
        app.add_api_route(
            f"/static/{name}", _asset(name, media), methods=["GET"], include_in_schema=False
        )


def _asset(name: str, media: str):
    def asset() -> Response:
        return Response(viewer_asset(name), media_type=media)

    return asset
