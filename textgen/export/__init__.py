"""Export: a run as files that work without textgen.

``formats`` writes a ``.keras`` file, a SavedModel or a one-step ONNX graph; ``web`` writes the
offline page (``webpage/``: its HTML and the engine that steps the cells in browsers and Node).
The front exports ``export_run``, imported on first use.
"""

from textgen import exports_on_first_use

_EXPORTS = {"export_run": "textgen.export.formats"}
__all__ = sorted(_EXPORTS)
__getattr__ = exports_on_first_use(__name__, _EXPORTS)
