"""Serving trained runs to many clients at once.

- :mod:`textgen.serve.batching`: the scheduler that advances every in-flight request of a model
  together, one engine step per character (no web framework needed).
- :mod:`textgen.serve.app`: the OpenAI-compatible HTTP layer over it (FastAPI, the ``serve``
  extra), and the writing page at ``/``.
"""
