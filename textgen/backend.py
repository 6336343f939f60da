"""TensorFlow and Keras, imported once and quietly.

TensorFlow's native libraries print start-up chatter (CPU features, CUDA stubs, oneDNN) to
standard error while they load, and setting TF_CPP_MIN_LOG_LEVEL from inside a running process
does not reach that early output. Standard error is therefore muted for the import alone; errors
raised by the import itself still propagate normally. Every lazy TensorFlow import in textgen goes
through this module (``from textgen.backend import tf, keras``) so that it happens only on the
paths that need it.

The thread pools are set here too, before TensorFlow starts its runtime: half the cores per op
(intra-op; one thread on 2 cores) and as many concurrent ops as cores (inter-op). TensorFlow's
default, every core for every op, spends more time handing small per-timestep ops between
threads than it saves; on 2 cores it measured about 1.1x slower for textgen's training step and
1.4x slower for stock ``model.fit`` (``benchmarks/training.py`` uses this same setting). The two
independent chains of the training loop (``textgen.training.fast_lstm``) keep the cores busy
instead. Settings that the host program already chose, or a runtime already started, are left alone.
"""

import os

from textgen.cores import usable_cores

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


def _configure_threads() -> None:
    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() or threading.get_inter_op_parallelism_threads():
        return
    cores = usable_cores()
    try:
        threading.set_intra_op_parallelism_threads(max(1, cores // 2))
        threading.set_inter_op_parallelism_threads(max(2, cores))
    except RuntimeError:  # the runtime is already running; its pools cannot change
        pass


_configure_threads()


def compiled(fn=None, /, **options):
    """``tf.function(fn, **options)`` without autograph; with no ``fn``, a decorator.

    textgen's compiled steps write their loops as ``tf.while_loop`` and branch in Python on
    Python values, so autograph's rewriting of their source changes nothing, and it was about 5
    of the 6 seconds that tracing the training step took at its first call (2-core Zen 5): time
    every run paid before its first step.
    """
    if fn is None:
        return lambda f: tf.function(f, autograph=False, **options)
    return tf.function(fn, autograph=False, **options)


__all__ = ["compiled", "keras", "tf"]
