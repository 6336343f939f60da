"""The compiled training steps, and the one way their gradients become an update.

A step is a pure function of the model, the optimizer state and its arguments: the seed fixes
the dropout masks and the learning rate is assigned before the update, so a resumed run replays
the steps of one that never stopped.

- ``build_train_step``: one process, the whole batch in one call.
- ``build_replica_train_step``: a cluster's step, each replica its block of the batch, the
  gradients summed over the replicas first.

Both hand their gradients to ``apply_update``: clip by the global norm (the optimizer's
``global_clipnorm``, with Keras's arithmetic), decay the matrices, then Adam's step for each
variable through the strategy (the default one for a single process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textgen.config import NO_NOISE, Noise, TrainConfig

if TYPE_CHECKING:
    from textgen.training.step_plan import StepPlan

# What the workers of a cluster vote on with every step, so that all of them stop together.
VOTES = ("max_time", "interrupted", "callback")


def make_optimizer(config: TrainConfig, clip: bool = True):
    """Adam with the run's peak learning rate and (unless ``clip`` is off) its clip norm.

    The steps clip by ``global_clipnorm`` themselves (``apply_update``), once, after the
    gradients of every replica are summed.
    """
    from textgen.backend import keras

    clip_norm = config.clip_norm if clip else None
    return keras.optimizers.Adam(learning_rate=config.learning_rate, global_clipnorm=clip_norm)


def clip_by_global_norm(grads: list, clip_norm: float) -> list:
    """``grads`` scaled to a global norm of at most ``clip_norm``.

    The arithmetic of Keras's ``global_clipnorm``, op for op, so that a step clipped here
    updates the weights to the last bit as ``optimizer.apply_gradients`` did; a non-finite norm
    makes every gradient NaN, which the loop reports.
    """
    from textgen.backend import keras

    ops = keras.ops
    norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(g)) for g in grads])))
    scale = clip_norm * ops.minimum(1.0 / norm, 1.0 / clip_norm)
    scale = scale + (norm - norm)  # NaN for an infinite or NaN norm
    return [g * scale for g in grads]


def _build(optimizer, variables) -> None:
    """Make the optimizer's slots for ``variables`` now, as ``apply_gradients`` would on its
    first call, so that the step's trace creates no variables."""
    if not optimizer.built:
        optimizer.build(variables)


def decay_matrices(variables, lr, rate: float) -> None:
    """Decoupled weight decay (as AdamW's): shrink every matrix by ``lr * rate``, before the update.

    Biases are left alone. ``apply_update`` calls this itself because it applies Adam's
    ``update_step`` directly, which skips the decay of Keras's ``weight_decay``.
    """
    if rate == 0:
        return
    for var in variables:
        if len(var.shape) >= 2:
            var.assign_sub(var * (lr * rate))


def apply_update(strategy, optimizer, grads: list, variables: list, lr, weight_decay: float):
    """Turn a step's gradients (already summed over replicas) into the update of ``variables``.

    What ``optimizer.apply_gradients`` does outside a strategy, written out so that a cluster's
    step can call it outside its replicas, where ``apply_gradients`` would need a replica's
    ``merge_call`` (and would sum the gradients again): clip, assign the rate, decay, one Adam
    step per variable through ``strategy.extended.update``, count the iteration.
    """
    if optimizer.global_clipnorm:
        grads = clip_by_global_norm(grads, optimizer.global_clipnorm)
    optimizer.learning_rate.assign(lr)
    rate = optimizer.learning_rate
    decay_matrices(variables, lr, weight_decay)
    for grad, var in zip(grads, variables, strict=True):
        strategy.extended.update(
            var.value, lambda v, g: optimizer.update_step(g, v, rate), args=(grad,), group=False
        )
    optimizer.iterations.assign_add(1)


def build_train_step(
    model,
    optimizer,
    noise: Noise = NO_NOISE,
    grad_norm=None,
    plan: StepPlan | None = None,
    stock: bool = False,
    weight_decay: float = 0.0,
):
    """The compiled training step ``(x, y, seed, lr) -> mean loss`` of one process.

    ``seed`` (int32 [2]) fixes the masks of ``noise`` and ``lr`` is assigned before the update.
    When given, the float variable ``grad_norm`` receives the gradient's global norm (before
    clipping). ``plan`` is how the LSTM layers run (``textgen.training.step_plan``) and ``stock``
    trains them through ``keras.layers.LSTM`` (see ``textgen.training.forward.make_forward``).
    ``weight_decay`` is as in ``decay_matrices``.
    """
    from textgen.backend import compiled, tf
    from textgen.training.forward import make_forward

    forward = make_forward(model, noise, plan, stock=stock)
    variables = model.trainable_variables
    _build(optimizer, variables)
    ids = tf.TensorSpec([None, None], tf.int32)
    signature = [ids, ids, tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32)]

    @compiled(input_signature=signature)
    def train_step(x, y, seed, lr):
        with tf.GradientTape() as tape:
            logits = forward(x, training=True, seed=seed)  # (B, T, vocab)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = tape.gradient(loss, variables)
        if grad_norm is not None:
            grad_norm.assign(tf.linalg.global_norm(grads))
        apply_update(tf.distribute.get_strategy(), optimizer, grads, variables, lr, weight_decay)
        return loss

    return train_step


def build_replica_train_step(
    cluster,
    model,
    optimizer,
    noise: Noise,
    grad_norm,
    stock: bool = False,
    plan: StepPlan | None = None,
    weight_decay: float = 0.0,
):
    """The training step of a cluster: ``(x, y, offset, rows, seed, lr, votes) -> (loss, votes)``.

    ``x``, ``y`` and ``offset`` are distributed values (``Cluster.per_replica``): each replica's
    block of a global batch of ``rows`` rows and where the block starts. Each replica divides
    its summed loss by the whole batch's size, so the all-reduced sum of the replicas' gradients
    is the gradient of the batch's mean loss, as in ``build_train_step``; ``apply_update`` then
    clips that sum once (Keras's ``global_clipnorm`` inside the replicas would clip each part
    before the sum). ``votes`` (float [3], ``VOTES``) are summed over workers with the gradients
    and returned.
    """
    from textgen.backend import tf
    from textgen.training.forward import make_forward

    forward = make_forward(model, noise, plan, stock=stock)
    variables = model.trainable_variables
    _build(optimizer, variables)
    strategy = cluster.strategy

    def replica_step(x, y, offset, rows, seed, votes):
        with tf.GradientTape() as tape:
            logits = forward(x, training=True, seed=seed, rows=(offset, rows))  # (b, T, vocab)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            size = tf.cast(rows * tf.shape(x)[1], losses.dtype)
            loss = tf.reduce_sum(losses) / size
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        votes = tf.identity(votes)  # placed on the replica's device, as all_reduce needs
        return _all_reduce_packed([*grads, loss, votes])

    def train_step(x, y, offset, rows, seed, lr, votes):
        with strategy.scope():
            summed = strategy.run(replica_step, args=(x, y, offset, rows, seed, votes))
            *grads, loss, votes = [strategy.experimental_local_results(v)[0] for v in summed]
            grad_norm.assign(tf.linalg.global_norm(grads))
            apply_update(strategy, optimizer, grads, variables, lr, weight_decay)
        return loss, votes

    ids, scalar = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)
    signature = [ids, ids, scalar, scalar, tf.TensorSpec([2], tf.int32)]
    signature += [tf.TensorSpec([], tf.float32), tf.TensorSpec([len(VOTES)], tf.float32)]
    return cluster.compile(train_step, signature)


def _all_reduce_packed(tensors: list) -> list:
    """The replicas' sums of ``tensors``, through one all-reduce of all of them end to end.

    One collective per tensor costs a round of messages each; packed, the gradients' all-reduce
    between two pinned workers took about 17 ms a step instead of 23.
    """
    from textgen.backend import tf

    context = tf.distribute.get_replica_context()
    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM, flat)
    pieces = tf.split(flat, [t.shape.num_elements() for t in tensors])
    return [tf.reshape(p, t.shape) for p, t in zip(pieces, tensors, strict=True)]


class LocalSteps:
    """One process's training steps: each batch whole, through ``build_train_step``.

    Stop conditions act before the batch they would cut (``voted`` is False).
    """

    voted = False

    def __init__(self, cluster, model, optimizer, config: TrainConfig, grad_norm, plan, stock):
        self.step = build_train_step(
            model,
            optimizer,
            config.noise(),
            grad_norm,
            plan,
            stock=stock,
            weight_decay=config.weight_decay,
        )

    def batches(self, ids, starts, seq_length: int, batch_size: int):
        """The batches ``(x, y)`` of windows starting at ``starts``."""
        from textgen.training.windows import window_dataset

        return window_dataset(ids, starts, seq_length, batch_size)

    def __call__(self, batch, seed, lr, votes: list[bool]) -> tuple[float, list[bool]]:
        """Train one batch; the votes are this process's alone, returned as they are."""
        from textgen.backend import tf

        x, y = batch
        return float(self.step(x, y, seed, tf.constant(lr, tf.float32))), votes


class ReplicaSteps:
    """A cluster's training steps: each replica its rows of the batch (``Cluster.local_rows``).

    The workers vote on stopping with every step (``VOTES``, ``voted`` is True), so that all of
    them stop after the same batch.
    """

    voted = True

    def __init__(self, cluster, model, optimizer, config: TrainConfig, grad_norm, plan, stock):
        self.cluster = cluster
        self.step = build_replica_train_step(
            cluster,
            model,
            optimizer,
            config.noise(),
            grad_norm,
            stock,
            plan,
            config.weight_decay,
        )

    def batches(self, ids, starts, seq_length: int, batch_size: int):
        """This process's parts ``((x, y) per local replica, rows)`` of each batch."""
        from textgen.training.windows import replica_windows

        return replica_windows(ids, starts, seq_length, batch_size, self.cluster.local_rows)

    def __call__(self, batch, seed, lr, votes: list[bool]) -> tuple[float, list[bool]]:
        """Train one batch; returns the loss and, for each of ``VOTES``, whether any worker
        voted for it (every worker sees the same sums)."""
        from textgen.backend import tf

        cluster = self.cluster
        parts, rows = batch
        blocks = cluster.local_rows(rows)
        x = cluster.per_replica([tf.constant(px) for px, _ in parts])
        y = cluster.per_replica([tf.constant(py) for _, py in parts])
        offset = cluster.per_replica([tf.constant(lo, tf.int32) for lo, _ in blocks])
        lr_t = tf.constant(lr, tf.float32)
        mine = tf.constant(votes, tf.float32)
        loss, summed = self.step(x, y, offset, tf.constant(rows, tf.int32), seed, lr_t, mine)
        return float(loss), [bool(v > 0) for v in summed.numpy()]


def make_steps(cluster, model, optimizer, config: TrainConfig, grad_norm, plan: StepPlan, stock):
    """The training steps for ``cluster``: ``LocalSteps`` for one process on its own."""
    kind = ReplicaSteps if cluster.replicated else LocalSteps
    return kind(cluster, model, optimizer, config, grad_norm, plan, stock)
