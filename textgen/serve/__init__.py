"""Serving trained runs to many clients at once.

- :mod:`textgen.serve.batching`: the scheduler that advances every in-flight request of a model
  together, one engine step per character, over ``textgen.sample``'s generation core (no web
  framework needed).
- :mod:`textgen.serve.engine_process`: that scheduler in a process of its own, one per served
  model, so that the engine never waits for the web server's turn at the interpreter.
- :mod:`textgen.serve.app`: the OpenAI-compatible HTTP layer over it (FastAPI, the ``serve``
  extra), and the writing page at ``/``.
- :mod:`textgen.serve.inspect_route`: ``POST /v1/inspect`` for the page's Inspect tab.
- :mod:`textgen.serve.limits`: what a server accepts, light enough for the command line.

The front exports ``serve`` and ``Limits``, imported on first use.
"""

from textgen import exports_on_first_use

_EXPORTS = {"serve": "textgen.serve.app", "Limits": "textgen.serve.limits"}
__all__ = sorted(_EXPORTS)
__getattr__ = exports_on_first_use(__name__, _EXPORTS)
