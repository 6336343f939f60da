"""Sampling: a trained run -> text, one character at a time, with numpy alone.

``sampler.Sampler`` drives ``generation``'s batch core (rows with their own ``options``, noise
from ``draw``, stop strings, scores) over ``engine``'s numpy cells; ``beam`` searches over the
same rows; ``chat`` turns a conversation into a prompt; ``output`` writes samples; ``copies``
finds where a sample repeats the corpus; ``inspection`` and ``inspect_report`` read a text
through the engine and show what the network saw (the viewer is ``static/``).

Nothing here imports TensorFlow when loaded, or anything of ``textgen.training``. The front
exports what the command line uses, each imported on first use.
"""

from textgen import exports_on_first_use

_EXPORTS = {
    "Sampler": "textgen.sample.sampler",
    "SamplingOptions": "textgen.sample.options",
    "best_of_rows": "textgen.sample.options",
    "random_seed": "textgen.sample.options",
    "CHUNK_STREAMS": "textgen.sample.output",
    "write_samples": "textgen.sample.output",
    "ChatTemplate": "textgen.sample.chat",
    "copy_checker": "textgen.sample.copies",
    "copy_checker_or_warn": "textgen.sample.copies",
    "sample_within": "textgen.sample.copies",
    "BUILTIN_FEATURES": "textgen.sample.inspection",
    "Inspector": "textgen.sample.inspection",
    "parse_feature": "textgen.sample.inspection",
    "write_report": "textgen.sample.inspect_report",
}
__all__ = sorted(_EXPORTS)
__getattr__ = exports_on_first_use(__name__, _EXPORTS)
