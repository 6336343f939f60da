"""Export a trained run to formats that work where textgen is not installed.

Four formats, one function each, and :func:`export_run` to pick one:

- ``keras``: a ``.keras`` file of the stock model (Embedding -> recurrent layers -> Dropout ->
  Dense) that ``keras.saving.load_model`` opens with no custom objects.
- ``savedmodel``: a TensorFlow SavedModel directory with three signatures: ``serving_default``
  (ids ``[batch, time]`` -> logits ``[batch, time, vocab]``), ``step`` (one id per stream and the
  states in, logits and the new states out) and ``generate`` (a prompt string in, the prompt
  followed by the generated text out, looped in the graph with stateless random ops).
- ``onnx``: a one-step ONNX graph: ``ids`` (int64 ``[batch]``) and the states ``h_0``, ``c_0``
  (LSTM only), ``h_1``, ... (float32 ``[batch, units]``) in; ``logits`` and the new states
  ``new_h_0``, ``new_c_0``, ... out, in the same order.
- ``web``: a folder that is an offline page for the model, with a JavaScript engine that runs in
  browsers and Node (``textgen.export.web``); it needs the weights and vocabulary only.

The SavedModel and ONNX graphs spell out the Keras cell equations (``LSTMCell``, ``GRUCell``
with ``reset_after=True``, ``SimpleRNNCell``) with plain ops instead of tracing Keras layers:
no cuDNN-only op can reach the graph, TF Serving and onnxruntime run every op they hold, and
ONNX export needs only numpy and the ``onnx`` package (no TensorFlow, no tf2onnx, whose
releases trail TensorFlow's). Tests hold every graph to the Keras model's logits.

Each export writes ``tokenizer.json`` beside the artefact (in the folder that holds it) and
embeds the vocabulary where the format allows: an entry ``tokenizer.json`` in the ``.keras``
archive, an asset (and in-graph constants) in the SavedModel, a ``tokenizer`` metadata entry in
the ONNX model. The SavedModel takes ids as int32, as the Keras model does. The web folder is
self-contained: its ``tokenizer.json`` goes inside it.

An artefact is written under a temporary name beside ``out`` and renamed into place, so a
failed export leaves any previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from textgen.cells import get_cell
from textgen.errors import TextgenError
from textgen.export.web import WEIGHT_TYPES, export_web, is_web_export
from textgen.files import atomic_write
from textgen.run import TOKENIZER, WHICH, Run, open_run
from textgen.tokenizer import UNKNOWN_CHAR
from textgen.weights import RNN_PARTS, rnn_name

FORMATS = ("keras", "savedmodel", "onnx", "web")
_SUFFIXES = {".keras": "keras", ".onnx": "onnx"}
ONNX_OPSET = 17


def state_names(cell: str, num_layers: int) -> list[str]:
    """The state inputs of the step graphs, in order: ``h_0``, ``c_0`` (LSTM), ``h_1``, ..."""
    per_layer = get_cell(cell).states
    return [f"{s}_{i}" for i in range(num_layers) for s in per_layer]


def export_run(
    run_dir: str | Path,
    out: str | Path,
    fmt: str | None = None,
    which: str = "best",
    force: bool = False,
    weights: str | None = None,
) -> Path:
    """Export a run's ``best`` or ``latest`` weights to ``out`` in format ``fmt``.

    Args:
        run_dir: the run directory.
        out: the artefact to write: a ``.keras`` file, a SavedModel folder or an ONNX file.
        fmt: ``"keras"``, ``"savedmodel"``, ``"onnx"`` or ``"web"``; None infers it from
            ``out``'s suffix (``.keras`` or ``.onnx``).
        which: ``"best"`` or ``"latest"`` checkpoint.
        force: replace an existing ``out`` (and a different ``tokenizer.json`` beside it).
        weights: the web format's weight type, ``"float16"`` (None: the default) or
            ``"float32"``; the other formats keep the run's float32 weights and refuse it.

    Returns:
        The path of the artefact.

    Raises:
        TextgenError: an unknown or unclear format, an existing output without ``force``, a
            run that does not load, or a missing optional package.
    """
    out = Path(out)
    if fmt is None:
        fmt = _SUFFIXES.get(out.suffix.lower())
        if fmt is None:
            raise TextgenError(f"cannot tell the format from {out.name!r}; pass --format")
    if fmt not in FORMATS:
        raise TextgenError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if which not in WHICH:
        raise TextgenError(f"unknown checkpoint {which!r}; choose best or latest")
    if fmt == "keras" and out.suffix != ".keras":
        raise TextgenError(f"a Keras model file must end in .keras, got {out.name!r}")
    if weights is not None and fmt != "web":
        raise TextgenError("--weights applies to --format web only")
    if fmt == "web":
        weights = weights or "float16"
        if weights not in WEIGHT_TYPES:
            raise TextgenError(f"unknown weight type {weights!r}; choose float16 or float32")
    if (out.exists() or out.is_symlink()) and not force:
        raise TextgenError(f"{out} already exists; pass --force to replace it")
    # --force replaces an earlier export of the same format, never a folder of something else.
    if fmt == "web" and (out.exists() or out.is_symlink()) and not is_web_export(out):
        raise TextgenError(f"{out} exists but is not a web export; choose another output")
    is_folder = out.is_dir() and not out.is_symlink()
    if fmt != "web" and is_folder and not (out / "saved_model.pb").is_file():
        raise TextgenError(f"{out} is a folder but not a SavedModel; choose another output")
    run = open_run(run_dir, which)
    if fmt == "web":
        _make_parent(out)
        _write_in_place(out, lambda tmp: export_web(run, tmp, weights))
        return out
    vocab_file = out.parent / TOKENIZER
    vocab_text = (run.run_dir / TOKENIZER).read_bytes()
    copy_vocab = _needs_copy(vocab_file, vocab_text, force)
    writer = {"keras": export_keras, "savedmodel": export_savedmodel, "onnx": export_onnx}[fmt]
    _make_parent(out)
    _write_in_place(out, lambda tmp: writer(run, tmp))
    if copy_vocab:
        atomic_write(vocab_file, lambda f: f.write(vocab_text))
    return out


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TextgenError(f"cannot write {out}: {err.strerror}") from None


def _needs_copy(vocab_file: Path, vocab_text: bytes, force: bool) -> bool:
    """Whether ``tokenizer.json`` must be written beside the artefact (refused if it differs)."""
    if not vocab_file.exists():
        return True
    if vocab_file.is_file() and vocab_file.read_bytes() == vocab_text:
        return False
    if not force:
        raise TextgenError(
            f"{vocab_file} already exists with another vocabulary; pass --force to replace it"
        )
    return True


def _write_in_place(out: Path, write: Callable[[Path], None]) -> None:
    """Let ``write`` build the artefact at a temporary path, then move it to ``out``."""
    try:
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise TextgenError(f"cannot write {out}: {err.strerror}") from None
    tmp = tmp_root / out.name  # keeps the suffix that Keras insists on
    try:
        write(tmp)
        if out.exists() or out.is_symlink():
            # Moved aside first: a folder cannot be renamed over a file or a non-empty folder.
            os.replace(out, tmp_root / "replaced")
        os.replace(tmp, out)
    except OSError as err:
        raise TextgenError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


# -- Keras ---------------------------------------------------------------------------------------


def export_keras(run: Run, out: Path) -> None:
    """Save the stock Keras model with the run's weights, and the vocabulary inside the archive.

    ``keras.saving.load_model`` ignores archive entries it does not know, so the extra
    ``tokenizer.json`` entry costs nothing to readers that do not want it.
    """
    import zipfile

    run.build_model().save(out)
    with zipfile.ZipFile(out, "a") as archive:
        archive.writestr(TOKENIZER, json.dumps(run.tokenizer.to_json()))


# -- SavedModel ----------------------------------------------------------------------------------


def export_savedmodel(run: Run, out: Path) -> None:
    """Write a SavedModel with ``serving_default``, ``step`` and ``generate`` signatures.

    The graph holds only plain matmuls and elementwise ops, written here, never a Keras layer
    that could pick a cuDNN-only kernel when a GPU is visible; so it runs on any device. (The
    ``textgen export`` command hides GPUs as well; this function leaves the caller's devices be.)
    """
    from textgen.backend import tf

    module = _build_module(tf, run)
    tf.saved_model.save(
        module,
        str(out),
        signatures={
            "serving_default": module.logits.get_concrete_function(),
            "step": module.step.get_concrete_function(),
            "generate": module.generate.get_concrete_function(),
        },
    )


# Keras's cell equations, term by term (activation tanh, recurrent activation sigmoid): one
# layer's step from its input x and states to its new states, h first.


def _tf_lstm(tf, x, states, kernel, recurrent, bias):
    h, c = states
    i_gate, f_gate, candidate, o_gate = tf.split(
        tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias, 4, axis=1
    )
    c = tf.sigmoid(f_gate) * c + tf.sigmoid(i_gate) * tf.tanh(candidate)
    h = tf.sigmoid(o_gate) * tf.tanh(c)
    return [h, c]


def _tf_gru(tf, x, states, kernel, recurrent, bias):
    # reset_after=True: the reset gate scales the recurrent projection
    (h,) = states
    x_z, x_r, x_h = tf.split(tf.matmul(x, kernel) + bias[0], 3, axis=1)
    h_z, h_r, h_h = tf.split(tf.matmul(h, recurrent) + bias[1], 3, axis=1)
    z = tf.sigmoid(x_z + h_z)
    r = tf.sigmoid(x_r + h_r)
    candidate = tf.tanh(x_h + r * h_h)
    return [z * h + (1.0 - z) * candidate]


def _tf_simple(tf, x, states, kernel, recurrent, bias):
    (h,) = states
    return [tf.tanh(tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias)]


_TF_STEPS = {"lstm": _tf_lstm, "gru": _tf_gru, "simple": _tf_simple}


def _build_module(tf, run: Run):
    """A ``tf.Module`` holding the weights as variables and the three graph functions."""
    shape, w = run.config.model, run.weights
    cell, layers, units, vocab = shape.cell, shape.num_layers, shape.units, shape.vocab_size
    cell_step = get_cell(cell).equations(_TF_STEPS, "the SavedModel export")
    names = state_names(cell, layers)
    per_layer = get_cell(cell).state_size

    module = tf.Module(name="textgen")
    module.embedding = tf.Variable(w["embedding"], trainable=False, name="embedding")
    module.cells = [
        [
            tf.Variable(w[f"{rnn_name(i)}/{part}"], trainable=False, name=f"{rnn_name(i)}_{part}")
            for part in RNN_PARTS
        ]
        for i in range(layers)
    ]
    module.dense_kernel = tf.Variable(w["dense/kernel"], trainable=False, name="dense_kernel")
    module.dense_bias = tf.Variable(w["dense/bias"], trainable=False, name="dense_bias")
    module.tokenizer = tf.saved_model.Asset(str(run.run_dir / TOKENIZER))

    def advance(ids, states):
        """One id per stream -> (logits (B, vocab), new flat states)."""
        x = tf.gather(module.embedding, ids)
        new = []
        for i, (kernel, recurrent, bias) in enumerate(module.cells):
            layer_states = cell_step(
                tf, x, states[i * per_layer : (i + 1) * per_layer], kernel, recurrent, bias
            )
            new += layer_states
            x = layer_states[0]
        return tf.matmul(x, module.dense_kernel) + module.dense_bias, new

    def zeros(batch):
        return [tf.zeros([batch, units], tf.float32) for _ in names]

    state_specs = [tf.TensorSpec([None, units], tf.float32, name=n) for n in names]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="ids"), *state_specs])
    def step(ids, *states):
        logits, new = advance(ids, list(states))
        return {"logits": logits, **{f"new_{n}": s for n, s in zip(names, new)}}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    def logits(ids):
        time_major = tf.transpose(ids)  # (T, B)

        def scan_step(carry, ids_t):
            out, new = advance(ids_t, list(carry[1:]))
            return (out, *new)

        first = (tf.zeros([tf.shape(ids)[0], vocab], tf.float32), *zeros(tf.shape(ids)[0]))
        outputs = tf.scan(scan_step, time_major, initializer=first)[0]  # (T, B, vocab)
        return {"logits": tf.transpose(outputs, [1, 0, 2])}

    generate = _generate_function(tf, run, advance, zeros)
    module.step, module.logits, module.generate = step, logits, generate
    return module


def _generate_function(tf, run: Run, advance, zeros):
    """The graph's ``generate(prompt, length, temperature, seed) -> {"text"}``, over ``advance``
    (one id per stream -> logits and new states) and ``zeros`` (the zero states of a batch)."""
    from textgen.sample.sampler import Sampler

    tokenizer, vocab = run.tokenizer, run.config.model.vocab_size
    known = np.array([ord(c) for c in tokenizer.chars], np.int32)
    decoded = np.append(known, np.int32(ord(UNKNOWN_CHAR))) if tokenizer.unknown else known
    unknown_id = tokenizer.unknown_id
    # With no prompt the model starts from the id textgen's sampler starts from.
    start_id = int(Sampler.from_run(run).prime_ids("")[0])

    @tf.function(
        input_signature=[
            tf.TensorSpec([], tf.string, name="prompt"),
            tf.TensorSpec([], tf.int32, name="length"),
            tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int64, name="seed"),
        ]
    )
    def generate(prompt, length, temperature, seed):
        tf.debugging.assert_non_negative(length, message="length must be >= 0")
        tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0")
        points = tf.strings.unicode_decode(prompt, "UTF-8")
        table = tf.constant(known)
        where = tf.minimum(tf.searchsorted(table, points), len(known) - 1)
        is_known = tf.gather(table, where) == points
        if unknown_id is None:
            tf.debugging.assert_equal(
                tf.reduce_all(is_known),
                True,
                message="the prompt has characters outside the vocabulary",
            )
            prime = where
        else:
            prime = tf.where(is_known, where, unknown_id)
        prime = tf.cond(tf.size(prime) > 0, lambda: prime, lambda: tf.constant([start_id]))

        def feed(i, out, *states):
            out, new = advance(tf.reshape(prime[i], [1]), list(states))
            return (i + 1, out, *new)

        primed = tf.while_loop(
            lambda i, *_: i < tf.size(prime),
            feed,
            (tf.constant(0), tf.zeros([1, vocab]), *zeros(1)),
        )
        exclude = tf.one_hot(unknown_id if unknown_id is not None else vocab, vocab + 1)[:vocab]
        mask = tf.where(exclude > 0, -np.inf, 0.0)[None, :]  # the unknown id is never drawn

        def draw(t, out, drawn, *states):
            scores = out + mask
            choice = tf.cond(
                temperature > 0,
                lambda: tf.random.stateless_categorical(
                    scores / temperature,
                    1,
                    seed=tf.stack([seed, tf.cast(t, tf.int64)]),
                    dtype=tf.int32,
                )[:, 0],
                lambda: tf.argmax(scores, axis=1, output_type=tf.int32),
            )
            out, new = advance(choice, list(states))
            return (t + 1, out, drawn.write(t, choice[0]), *new)

        result = tf.while_loop(
            lambda t, *_: t < length,
            draw,
            (tf.constant(0), primed[1], tf.TensorArray(tf.int32, size=length), *primed[2:]),
        )
        text = tf.strings.unicode_encode(tf.gather(decoded, result[2].stack()), "UTF-8")
        return {"text": prompt + text}

    return generate


# -- ONNX ----------------------------------------------------------------------------------------


def export_onnx(run: Run, out: Path) -> None:
    """Write the one-step ONNX graph, with the vocabulary in its ``tokenizer`` metadata entry."""
    try:
        import onnx
    except ImportError:
        raise TextgenError(
            "ONNX export needs the onnx package: pip install 'textgen[export]'"
        ) from None
    model = onnx_model(run)
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())


class _Graph:
    """The nodes and initializers of an ONNX graph, added as they are made."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._names: set[str] = set()
        self._count = iter(range(1_000_000))

    def const(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        """An initializer (made once however often it is asked for), by its name."""
        if name not in self._names:
            self._names.add(name)
            self.inits.append(self._numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, kind: str, *inputs: str, outputs: int = 1, out: str | None = None, **attrs):
        made = [out] if out else [f"{kind.lower()}_{next(self._count)}" for _ in range(outputs)]
        self.nodes.append(self._helper.make_node(kind, list(inputs), made, **attrs))
        return made[0] if outputs == 1 else made

    def linear(self, x: str, kernel: str, bias: str | None = None, out: str | None = None) -> str:
        y = self.op("MatMul", x, kernel)
        return self.op("Add", y, bias, out=out) if bias else y

    def gate_sizes(self, gates: int, units: int) -> str:
        """The sizes of a layer's gate blocks, for Split."""
        return self.const("gate_sizes", np.full(gates, units), np.int64)


# Keras's cell equations as ONNX nodes: one layer's step from its input x and its states
# (h_i, c_i) to its new states (new_h_i, new_c_i), returning new_h_i.


def _kernels(g: _Graph, i: int, w) -> tuple[str, str]:
    """Layer ``i``'s input and recurrent kernels as initializers."""
    layer = rnn_name(i)
    return (
        g.const(f"{layer}/kernel", w[f"{layer}/kernel"]),
        g.const(f"{layer}/recurrent_kernel", w[f"{layer}/recurrent_kernel"]),
    )


def _onnx_lstm(g: _Graph, i: int, x: str, w, units: int) -> str:
    kernel, recurrent = _kernels(g, i, w)
    bias = g.const(f"{rnn_name(i)}/bias", w[f"{rnn_name(i)}/bias"])
    both = g.op("Add", g.linear(x, kernel), g.linear(f"h_{i}", recurrent, bias))
    sizes = g.gate_sizes(4, units)
    i_gate, f_gate, candidate, o_gate = g.op("Split", both, sizes, axis=1, outputs=4)
    c = g.op(
        "Add",
        g.op("Mul", g.op("Sigmoid", f_gate), f"c_{i}"),
        g.op("Mul", g.op("Sigmoid", i_gate), g.op("Tanh", candidate)),
        out=f"new_c_{i}",
    )
    return g.op("Mul", g.op("Sigmoid", o_gate), g.op("Tanh", c), out=f"new_h_{i}")


def _onnx_gru(g: _Graph, i: int, x: str, w, units: int) -> str:
    # reset_after=True, as Keras's GRUCell
    layer, h, bias = rnn_name(i), f"h_{i}", w[f"{rnn_name(i)}/bias"]
    kernel, recurrent = _kernels(g, i, w)
    from_x = g.linear(x, kernel, g.const(f"{layer}/input_bias", bias[0]))
    from_h = g.linear(h, recurrent, g.const(f"{layer}/recurrent_bias", bias[1]))
    sizes = g.gate_sizes(3, units)
    x_z, x_r, x_h = g.op("Split", from_x, sizes, axis=1, outputs=3)
    h_z, h_r, h_h = g.op("Split", from_h, sizes, axis=1, outputs=3)
    z = g.op("Sigmoid", g.op("Add", x_z, h_z))
    r = g.op("Sigmoid", g.op("Add", x_r, h_r))
    candidate = g.op("Tanh", g.op("Add", x_h, g.op("Mul", r, h_h)))
    one = g.const("one", np.ones(1))
    return g.op(
        "Add",
        g.op("Mul", z, h),
        g.op("Mul", g.op("Sub", one, z), candidate),
        out=f"new_h_{i}",
    )


def _onnx_simple(g: _Graph, i: int, x: str, w, units: int) -> str:
    kernel, recurrent = _kernels(g, i, w)
    bias = g.const(f"{rnn_name(i)}/bias", w[f"{rnn_name(i)}/bias"])
    both = g.op("Add", g.linear(x, kernel), g.linear(f"h_{i}", recurrent, bias))
    return g.op("Tanh", both, out=f"new_h_{i}")


_ONNX_STEPS = {"lstm": _onnx_lstm, "gru": _onnx_gru, "simple": _onnx_simple}


def onnx_model(run: Run):
    """Build the one-step graph from the weights as an ``onnx.ModelProto``."""
    shape, w = run.config.model, run.weights
    cell, units, vocab = shape.cell, shape.units, shape.vocab_size
    layer_step = get_cell(cell).equations(_ONNX_STEPS, "the ONNX export")
    from onnx import TensorProto, helper

    names = state_names(cell, shape.num_layers)
    g = _Graph()
    x = g.op("Gather", g.const("embedding", w["embedding"]), "ids", axis=0)
    for i in range(shape.num_layers):
        x = layer_step(g, i, x, w, units)
    dense_kernel = g.const("dense/kernel", w["dense/kernel"])
    g.linear(x, dense_kernel, g.const("dense/bias", w["dense/bias"]), out="logits")

    def spec(name: str, dtype, *dims):
        return helper.make_tensor_value_info(name, dtype, ["batch", *dims])

    graph = helper.make_graph(
        g.nodes,
        f"textgen_{cell}_step",
        [spec("ids", TensorProto.INT64), *(spec(n, TensorProto.FLOAT, units) for n in names)],
        [
            spec("logits", TensorProto.FLOAT, vocab),
            *(spec(f"new_{n}", TensorProto.FLOAT, units) for n in names),
        ],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="textgen",
        doc_string="One step of a textgen character model: ids and states in, logits and "
        "new states out.",
    )
    model.ir_version = 8  # the newest that onnxruntime releases of the last years all read
    helper.set_model_props(
        model,
        {
            "tokenizer": json.dumps(run.tokenizer.to_json()),
            "cell": cell,
            "num_layers": str(shape.num_layers),
            "units": str(units),
        },
    )
    return model
