"""Training: ids in windows -> a trained run directory.

``textgen.train`` (``training/train.py``) puts the settings, the corpus and the callbacks
together; ``trainer`` is the loop of one invocation, ``steps`` its compiled steps (over
``forward`` and ``fast_lstm``, planned for this machine by ``step_plan`` and ``precision``),
``distribute`` where it runs, ``evaluation`` the validation loss, ``averaging``, ``callbacks``
and ``watch`` what happens around each step, ``finetune`` a new run from a trained one, ``sizing``
the model's size for a time budget and ``report`` what ``textgen info`` says of a run.

The front exports what the command line and other stages use, each imported on first use, so
``import textgen.training`` costs nothing. The folder is named ``training`` rather than ``train``
because ``textgen.train`` is the public function.
"""

from textgen import exports_on_first_use

_EXPORTS = {
    "Callback": "textgen.training.callbacks",
    "EarlyStopping": "textgen.training.callbacks",
    "TrainResult": "textgen.training.train",
    "DEVICES": "textgen.training.distribute",
    "DISTRIBUTE": "textgen.training.distribute",
    "LN2": "textgen.training.evaluation",
    "evaluate_file": "textgen.training.evaluation",
    "describe_run": "textgen.training.report",
    "run_config_json": "textgen.training.report",
}
__all__ = sorted(_EXPORTS)
__getattr__ = exports_on_first_use(__name__, _EXPORTS)
