"""The training-time forward pass: embedding -> recurrent layers -> dropout -> dense.

It runs on a ``build_model`` network's own variables, so gradients taken through it train the
model. LSTM layers go through ``textgen.training.fast_lstm`` (the same maths with a hand-written
backward pass that trains about 1.5x faster on CPU); GRU and SimpleRNN layers are called as Keras
layers.

Training does not call ``model(ids, training=True)`` because Keras's Dropout draws from a
stateful generator; here dropout masks are a pure function of a per-step seed, which makes a
resumed run replay exactly the masks the uninterrupted run would have used.
"""

from __future__ import annotations

from collections.abc import Callable

from textgen.backend import tf
from textgen.cells import cell_of_layer
from textgen.config import NO_NOISE, Noise
from textgen.model import recurrent_layers
from textgen.training.step_plan import StepPlan, plan_for_this_machine


def stateless_dropout(x, rate: float, seed, rows=None, batch_axis: int = 0):
    """Inverted dropout whose mask depends only on ``seed`` (a shape-[2] int32 tensor).

    ``rows`` = ``(offset, total)`` says that ``x`` holds rows ``offset...`` of a batch of
    ``total`` rows (along ``batch_axis``): the mask is then that slice of the whole batch's mask,
    so replicas that each compute part of a batch drop exactly what one process would, while
    drawing only their own rows' numbers (``_random_halves``).

    Each element is dropped where a 16-bit draw falls below ``rate`` x 65536, rounded: the drop
    probability is ``rate`` to within 2^-17, and the kept elements are scaled by 1 / (1 - rate).
    Drawing 16 bits rather than a float32 per element halves the random generator's work, which
    at 512 units and batch 64 was most of what dropout added to a training step.
    """
    offset = 0 if rows is None else rows[0]
    threshold = min(round(rate * 65536), 65535)
    if batch_axis == 0:
        keep = _random_halves(tf.shape(x), seed, offset) >= threshold
    else:  # drawn batch-major, so that each row's numbers are one contiguous run
        order = [batch_axis, *(a for a in range(x.shape.rank) if a != batch_axis)]
        keep = _random_halves(tf.gather(tf.shape(x), order), seed, offset) >= threshold
        keep = tf.transpose(keep, tf.argsort(order))  # booleans: a quarter of float32's bytes
    return x * tf.where(keep, tf.constant(1.0 / (1.0 - rate), x.dtype), tf.zeros([], x.dtype))


def _random_halves(shape, seed, offset):
    """Uniform uint16 draws of ``shape`` (rows first) for rows ``offset...`` of a larger batch.

    The numbers are those rows of one stream of Philox's uint32 words over the whole batch,
    each word split in two: a counter value yields four words, eight draws, so the rows' draws
    start ``offset * row_size / 8`` counter values on, less the draws before them in that block.
    """
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=seed)
    count = tf.reduce_prod(shape)
    start = tf.cast(offset, tf.int64) * tf.cast(tf.reduce_prod(shape[1:]), tf.int64)
    skip = tf.stack([tf.cast(start // 8, tf.uint64), tf.constant(0, tf.uint64)])
    lead = tf.cast(start % 8, tf.int32)
    words = tf.raw_ops.StatelessRandomUniformFullIntV2(
        shape=[(lead + count + 1) // 2],
        key=key,
        counter=counter + skip,
        alg=tf.random.Algorithm.PHILOX.value,
        dtype=tf.uint32,
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])
    return tf.reshape(halves[lead : lead + count], shape)


def _fold(seed, k: int):
    """A seed of its own for mask ``k`` of a step.

    0: the characters; 1 + i: layer i's U; 1 + n + i: the outputs of layer i of n when it is
    not the last. The last layer's outputs use the step's seed itself.
    """
    return tf.random.experimental.stateless_fold_in(seed, k)


def make_forward(
    model, noise: Noise = NO_NOISE, plan: StepPlan | None = None, stock: bool = False
) -> Callable:
    """Return ``forward(ids, training, seed, rows=None) -> logits`` (batch, time, vocab).

    ``seed`` (int32 [2]) fixes the masks of ``noise``, applied only when ``training``; ``rows``
    is as in ``stateless_dropout``. ``plan`` says how the LSTM layers run (their products'
    operand type, chains and backward product; see ``textgen.training.step_plan``); None is this
    machine's float32 plan. Other cells ignore it. ``stock`` runs LSTM layers as Keras layers
    too (on a GPU, Keras's cuDNN kernel) instead of ``textgen.training.fast_lstm``; weight drop is
    then ignored.
    """
    layers = recurrent_layers(model)
    embedding = model.get_layer("embedding")
    dense = model.get_layer("dense")
    fast = cell_of_layer(layers[0]).fast_path and not stock
    plan = plan or plan_for_this_machine()
    lstm_options = {
        "time_major": True,
        "chains": plan.chains,
        "matmul_dtype": plan.matmul_dtype(),
        "backward": plan.backward,
        "gradient_rows": plan.gradient_rows,
    }

    def between_layers(x, k: int, training: bool, seed, rows, batch_axis: int):
        """Dropout on the outputs of layer ``k`` (not the last) as the next layer's input."""
        if not training or noise.dropout == 0 or k == len(layers) - 1:
            return x
        layer_seed = _fold(seed, 1 + len(layers) + k)
        return stateless_dropout(x, noise.dropout, layer_seed, rows, batch_axis=batch_axis)

    def lstm_stack(ids, training: bool, seed, rows):
        from textgen.training.fast_lstm import lstm_sequence, lstm_sequence_from_ids

        # Everything between the embedding and the logits stays time-major, so only the small
        # int ids and the logits are transposed.
        x = tf.transpose(ids)  # (T, B)
        for k, layer in enumerate(layers):
            cell = layer.cell
            weights = [
                tf.convert_to_tensor(v) for v in (cell.kernel, cell.recurrent_kernel, cell.bias)
            ]
            if training and noise.weight_drop > 0:
                layer_seed = _fold(seed, 1 + k)
                weights[1] = stateless_dropout(weights[1], noise.weight_drop, layer_seed)
            if k == 0:
                table = tf.convert_to_tensor(embedding.embeddings)
                if training and noise.embedding_dropout > 0:
                    table = table * character_mask(seed)
                x, _ = lstm_sequence_from_ids(x, table, *weights, **lstm_options)  # (T, B, H)
            else:
                x, _ = lstm_sequence(x, *weights, **lstm_options)
            x = between_layers(x, k, training, seed, rows, batch_axis=1)
        return x

    def character_mask(seed):
        """(vocab, 1): 0 for the characters this step drops, the scale-up for the rest."""
        ones = tf.ones([embedding.embeddings.shape[0], 1])
        return stateless_dropout(ones, noise.embedding_dropout, _fold(seed, 0))

    def keras_stack(ids, training: bool, seed, rows):
        x = embedding(ids)  # (B, T, E)
        if training and noise.embedding_dropout > 0:
            x = x * tf.gather(character_mask(seed), ids)
        for k, layer in enumerate(layers):
            x = between_layers(layer(x), k, training, seed, rows, batch_axis=0)  # (B, T, H)
        return x

    def forward(ids, training: bool, seed, rows=None):
        # (T, B, H) if fast else (B, T, H)
        x = (lstm_stack if fast else keras_stack)(ids, training, seed, rows)
        if training and noise.dropout > 0:
            x = stateless_dropout(x, noise.dropout, seed, rows, batch_axis=1 if fast else 0)
        shape = tf.shape(x)
        flat = tf.reshape(x, [shape[0] * shape[1], x.shape[-1]])  # not -1: a replica may get 0 rows
        logits = tf.nn.bias_add(
            tf.matmul(flat, tf.convert_to_tensor(dense.kernel)), tf.convert_to_tensor(dense.bias)
        )
        logits = tf.reshape(logits, [shape[0], shape[1], dense.kernel.shape[-1]])
        return tf.transpose(logits, [1, 0, 2]) if fast else logits

    return forward
