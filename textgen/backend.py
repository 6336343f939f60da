"""TensorFlow and Keras, imported once and quietly.

TensorFlow's native libraries print start-up chatter (CPU features, CUDA stubs, oneDNN) to
standard error while they load, and setting TF_CPP_MIN_LOG_LEVEL from inside a running process
does not reach that early output. Standard error is therefore muted for the import alone; errors
raised by the import itself still propagate normally. Every lazy TensorFlow import in textgen goes
through this module (``from textgen.backend import tf, keras``) so that it happens only on the
paths that need it.
"""

import os

_saved = os.dup(2)
_devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(_devnull, 2)
try:
    import keras
    import tensorflow as tf
finally:
    os.dup2(_saved, 2)
    os.close(_saved)
    os.close(_devnull)

__all__ = ["keras", "tf"]
