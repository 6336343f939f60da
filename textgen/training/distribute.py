"""Where training runs: one process, several local devices, or a cluster of worker processes.

``--distribute`` picks a ``tf.distribute`` strategy (``make_cluster``) and ``--device`` picks the
recurrent path (``choose_path``). Both are choices of one invocation, not of the run: nothing here
is written to the run directory, so a run trained on a cluster or a GPU resumes, samples and
exports on one CPU.

- ``none``: one process on its own, a ``LocalCluster``: one worker that is the chief, whose sums
  and broadcasts return their input and whose strategy is TensorFlow's default one, as Keras
  falls back to it; the loop needs no special case for it.
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over this machine's GPUs (or its logical CPU
  devices when it has no GPU: normally one, so one replica).
- ``multi-worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` configured by the standard
  ``TF_CONFIG`` variable, one process per worker. TensorFlow requires the strategy to exist
  before any other TensorFlow op, so ``textgen.training.train.train`` makes it first.

Every replica computes its rows of the global batch; gradients are summed over replicas with
``ReplicaContext.all_reduce`` (textgen's losses are already divided by the global batch), then
clipped and applied once, outside the replicas. Worker 0 is the chief: it alone writes the run
directory; the others receive its settings, vocabulary and checkpoint through ``broadcast_*``.

A worker that dies makes the collective in flight fail as soon as its connection drops (within
seconds on one machine); a peer that vanishes silently is caught by the strategy's own health
check, every 30 s, which aborts the collectives. Either way the waiting op raises one of
``lost_worker_errors``, which the training loop turns into one clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textgen.errors import TextgenError

if TYPE_CHECKING:
    import numpy as np

DISTRIBUTE = ("none", "mirrored", "multi-worker")
DEVICES = ("auto", "cpu", "gpu")


def choose_path(device: str, gpus: Sequence[str]) -> str:
    """The recurrent path for ``--device`` given the visible GPU names: ``fast`` or ``stock``.

    ``fast`` is textgen's hand-written LSTM step (``textgen.training.fast_lstm``), tuned for CPUs;
    ``stock`` is ``keras.layers.LSTM``, which runs Keras's cuDNN kernel on a GPU. ``auto`` takes the
    GPU when there is one; ``gpu`` without one is an error.
    """
    if device not in DEVICES:
        raise TextgenError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "gpu" and not gpus:
        raise TextgenError("--device gpu: TensorFlow sees no GPU on this machine")
    if device == "cpu":
        return "fast"
    return "stock" if gpus else "fast"


def worker_of(tf_config: str | None) -> tuple[int, int]:
    """``(this worker's index, number of workers)`` from the text of ``TF_CONFIG``.

    Only ``worker`` tasks are supported (the chief is worker 0); anything else is a TextgenError
    that says what is wrong.
    """
    if not tf_config:
        raise TextgenError("--distribute multi-worker needs the TF_CONFIG environment variable")
    try:
        config = json.loads(tf_config)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise TextgenError(f"TF_CONFIG is not a cluster description ({err})") from None
    other = set(config["cluster"]) - {"worker"}
    if other or kind != "worker":
        raise TextgenError("TF_CONFIG: only 'worker' tasks are supported (worker 0 is the chief)")
    if not isinstance(workers, list) or not 0 <= index < len(workers):
        raise TextgenError(
            f"TF_CONFIG: task index {index} is not one of the {len(workers)} workers"
        )
    return index, len(workers)


def split_rows(rows: int, parts: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each of ``parts`` contiguous, near-equal blocks of ``rows`` rows."""
    return [((rows * k) // parts, (rows * (k + 1)) // parts) for k in range(parts)]


@dataclass
class Cluster:
    """A strategy and this process's place in it."""

    strategy: Any
    kind: str  # "mirrored" or "multi-worker"
    worker: int = 0  # this process's index; 0 is the chief
    workers: int = 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory."""
        return self.worker == 0

    replicated = True  # steps run on the strategy's replicas, and stops are voted on

    @property
    def replicas(self) -> int:
        """Replicas over all workers (each computes its share of a global batch)."""
        return self.strategy.num_replicas_in_sync

    @property
    def local_replicas(self) -> range:
        """The global indices of this process's replicas."""
        per_worker = self.replicas // self.workers
        return range(self.worker * per_worker, (self.worker + 1) * per_worker)

    def local_rows(self, rows: int) -> list[tuple[int, int]]:
        """The blocks of a ``rows``-row global batch that this process's replicas compute."""
        blocks = split_rows(rows, self.replicas)
        return [blocks[r] for r in self.local_replicas]

    def per_replica(self, values: Sequence[Any]):
        """One value per local replica (in ``local_replicas`` order) as a distributed value.

        With one local replica the value itself, which ``strategy.run`` hands to that replica,
        so that a step can be traced once for every batch shape (``compile``).
        """
        if len(self.local_replicas) == 1:
            return values[0]
        first = self.local_replicas.start
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: values[ctx.replica_id_in_sync_group - first]
        )

    def compile(self, fn, signature: list):
        """``fn`` as a ``tf.function``: traced once for ``signature`` when this process has one
        replica (its inputs are then plain tensors), else retraced as shapes come; without
        autograph (``textgen.backend.compiled``)."""
        from textgen.backend import compiled

        if len(self.local_replicas) == 1:
            return compiled(fn, input_signature=signature)
        return compiled(fn, reduce_retracing=True)

    def scope(self):
        """The strategy's scope, in which the model and optimizer are made (mirrored)."""
        return self.strategy.scope()

    @contextlib.contextmanager
    def lost_contact(self, run_dir: Path) -> Iterator[None]:
        """Turn the error a collective raises when a peer has gone into one clear TextgenError."""
        try:
            yield
        except lost_worker_errors() as err:
            lines = (getattr(err, "message", "") or str(err)).splitlines()
            said = [re.sub(r"\{\{[^}]*\}\}", "", line).strip() for line in lines]
            said = [line for line in said if line and not line.endswith("execution error:")]
            reason = (said[0] if said else type(err).__name__)[:200]
            raise TextgenError(
                f"worker {self.worker} of {self.workers} lost contact with the cluster "
                f"({reason}); once every worker has stopped, rerun each of them with --resume to "
                f"continue from the last checkpoint in {run_dir}"
            ) from None

    def summed_over_replicas(self, step, signature: list):
        """``step``, which returns sums, over this process's replicas: each replica gets its
        block of the rows of the array arguments (scalars go to all of them whole), and their
        results are added up."""
        from textgen.backend import tf

        strategy = self.strategy

        def summed(*args):
            with strategy.scope():
                sums = strategy.run(step, args=args)
                return [tf.add_n(strategy.experimental_local_results(v)) for v in sums]

        compiled = self.compile(summed, signature)

        def distributed_step(*args):
            blocks = split_rows(len(args[0]), len(self.local_replicas))
            parts = [
                self.per_replica([tf.constant(a[lo:hi]) for lo, hi in blocks])
                if spec.shape.rank
                else tf.constant(a, spec.dtype)
                for a, spec in zip(args, signature, strict=True)
            ]
            return compiled(*parts)

        return distributed_step

    def sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The element-wise sums of ``arrays`` over the workers.

        Every worker passes arrays of the same shapes and dtypes, in the same order; one
        collective per dtype.
        """
        import numpy as np

        arrays = [np.asarray(a) for a in arrays]
        if self.workers == 1:
            return arrays
        from textgen.backend import tf

        out: list = [None] * len(arrays)
        for dtype in sorted({a.dtype.str for a in arrays}):  # the same order on every worker
            where = [i for i, a in enumerate(arrays) if a.dtype.str == dtype]
            mine = [tf.constant(arrays[i]) for i in where]
            # Only the first local replica contributes, so several devices per worker count once.
            nothing = [tf.zeros_like(v) for v in mine]
            values = self.per_replica([mine] + [nothing] * (len(self.local_replicas) - 1))
            summed = self.strategy.experimental_local_results(self._sum_fn()(values))[0]
            for i, value in zip(where, summed, strict=True):
                out[i] = np.asarray(value.numpy())
        return out

    def broadcast_arrays(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The chief's ``arrays`` on every worker; the others pass arrays of the same shapes."""
        import numpy as np

        # A sum in which only the chief's terms are non-zero is exact.
        return self.sum([a if self.is_chief else np.zeros_like(a) for a in map(np.asarray, arrays)])

    def broadcast_text(self, text: str | None) -> str:
        """The chief's ``text`` on every worker (the others pass None)."""
        import numpy as np

        data = (text or "").encode("utf-8") if self.is_chief else b""
        (size,) = self.broadcast_arrays([np.array([len(data)], np.int64)])
        padded = data.ljust(-(-int(size[0]) // 4) * 4, b"\0")
        if not self.is_chief:
            padded = bytes(len(padded))
        (words,) = self.broadcast_arrays([np.frombuffer(padded, np.int32)])
        return words.tobytes()[: int(size[0])].decode("utf-8")

    def _sum_fn(self):
        fn = getattr(self, "_sum", None)
        if fn is None:
            from textgen.backend import tf

            strategy = self.strategy

            def replica_sum(values):
                ctx = tf.distribute.get_replica_context()
                values = [tf.identity(v) for v in values]  # on the replica's device
                return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

            fn = tf.function(
                lambda values: strategy.run(replica_sum, args=(values,)), reduce_retracing=True
            )
            self._sum = fn
        return fn


class LocalCluster:
    """One process on its own: the cluster of one worker, which is the chief.

    Its sums and broadcasts return their input unchanged, adding no work; its strategy is
    TensorFlow's default one (``tf.distribute.get_strategy()`` outside any scope), and its
    steps are the single-process ones, each batch whole.
    """

    kind = "none"
    worker = 0
    workers = 1
    is_chief = True
    replicated = False  # steps take the whole batch, and stops act before the next batch

    @property
    def strategy(self):
        """TensorFlow's default strategy: one replica, no scope."""
        from textgen.backend import tf

        return tf.distribute.get_strategy()

    def local_rows(self, rows: int) -> list[tuple[int, int]]:
        """The whole batch."""
        return [(0, rows)]

    def scope(self):
        """Nothing to enter: variables are made as usual."""
        return contextlib.nullcontext()

    def lost_contact(self, run_dir: Path):
        """No peers to lose."""
        return contextlib.nullcontext()

    def summed_over_replicas(self, step, signature: list):
        """``step`` itself: the one replica computes the whole batch."""
        return step

    def sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``arrays`` as given: there is no other worker to add."""
        return list(arrays)

    def broadcast_arrays(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``arrays`` as given: this process is the chief."""
        return list(arrays)

    def broadcast_text(self, text: str | None) -> str:
        """``text`` as given: this process is the chief."""
        return text or ""


LOCAL = LocalCluster()  # the one a single process trains and evaluates on


def make_cluster(kind: str) -> Cluster | LocalCluster:
    """The cluster for ``--distribute kind`` (``LOCAL`` for ``none``); call before any TF op."""
    if kind not in DISTRIBUTE:
        raise TextgenError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {kind!r}")
    if kind == "none":
        return LOCAL
    if kind == "multi-worker":
        worker, workers = worker_of(os.environ.get("TF_CONFIG"))
        from textgen.backend import tf

        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        return Cluster(strategy, kind, worker, workers)
    from textgen.backend import tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    return Cluster(strategy, kind)


def visible_gpus() -> list[str]:
    """The names of the GPUs TensorFlow sees."""
    from textgen.backend import tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def lost_worker_errors() -> tuple[type[Exception], ...]:
    """The TensorFlow errors a collective raises when a peer has gone."""
    from textgen.backend import tf

    errors = tf.errors
    return (
        errors.UnavailableError,
        errors.DeadlineExceededError,
        errors.CancelledError,
        errors.AbortedError,
        errors.FailedPreconditionError,
    )
