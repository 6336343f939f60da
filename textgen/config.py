"""The settings of a run, as typed dataclasses: the model's shape, training, and the run itself.

``RunConfig`` is what ``config.json`` holds; ``TrainState`` is the training loop's position, kept
in every checkpoint. This module imports neither numpy nor TensorFlow, so the command line reads
its defaults for ``--help`` for free.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from textgen.cells import get_cell
from textgen.errors import CheckpointError, TextgenError
from textgen.precision import PRECISIONS

DEFAULT_CORPUS = "pydocs"
"""What a run trains on when no corpus is named (a built-in; see ``textgen.corpus``)."""

DEFAULT_EPOCHS = 20
"""Epochs a run trains when neither ``--epochs`` nor a time budget is given."""

LR_SCHEDULES = ("auto", "cosine", "constant")
"""The ``--lr-schedule`` values; ``textgen.training.trainer.schedule_of`` says what each runs."""

DEFAULT_CONTEXT = 100
"""Characters read before each scored validation window unless a run says otherwise: enough
that a 512-unit LSTM's loss no longer depends on where the window starts."""


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape: everything ``textgen.model.build_model`` needs.

    A training run's settings hold one without its vocabulary (``vocab_size`` None), which the
    corpus decides: ``for_vocab`` completes it.
    """

    vocab_size: int | None = None  # characters in and logits out; None until the corpus is read
    embedding_dim: int = 64
    units: int = 512  # per recurrent layer
    num_layers: int = 1
    cell: str = "lstm"  # a key of textgen.cells.CELLS
    dropout: float = 0.3  # on every recurrent layer's output, while training

    def __post_init__(self) -> None:
        get_cell(self.cell)
        if self.vocab_size is not None and self.vocab_size < 2:
            raise TextgenError("the vocabulary needs at least 2 distinct characters")
        if min(self.embedding_dim, self.units, self.num_layers) < 1:
            raise TextgenError("embedding_dim, units and num_layers must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise TextgenError(f"dropout must be in [0, 1), got {self.dropout}")

    def for_vocab(self, vocab_size: int) -> ModelConfig:
        """This shape on a vocabulary of ``vocab_size`` characters."""
        return replace(self, vocab_size=vocab_size)


MODEL_SETTINGS = ("embedding_dim", "units", "num_layers", "cell", "dropout")
"""The training settings that are ``ModelConfig``'s fields (all but the vocabulary): a
``TrainConfig`` holds them as its ``shape``, and takes and reads them flat too (``units=256``,
``config.units``), as ``config.json``, ``train()`` and the command line spell them."""


@dataclass(frozen=True)
class Noise:
    """The training-time noise of a forward pass, each a rate in [0, 1); all off by default.

    - ``dropout``: on every recurrent layer's outputs (the next layer's or the dense layer's
      input).
    - ``weight_drop``: DropConnect on the LSTM recurrent kernels (the CPU path's). Each step drops
      that share of U's entries and scales the rest up to keep U's expectation.
    - ``embedding_dropout``: drops whole characters. Each step zeroes that share of the
      embedding table's rows (every occurrence of those characters in the batch) and scales
      the rest up. A mask over the table rather than over the timesteps keeps the first
      layer's projection of the table instead of every embedded timestep.

    Every mask is a pure function of the step's seed, so a resumed run replays them.
    """

    dropout: float = 0.0
    weight_drop: float = 0.0
    embedding_dropout: float = 0.0


NO_NOISE = Noise()  # the forward pass of evaluation and of steps that train without noise


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in ``config.json``.

    The network's shape is ``shape``, whose vocabulary the corpus decides (``model`` completes
    it). Its fields are also taken and read flat (``TrainConfig(units=256)``, ``config.units``;
    see ``MODEL_SETTINGS``), and ``to_json`` writes them flat.
    """

    # Epochs to reach in total (a resumed run continues up to this). None: DEFAULT_EPOCHS, or,
    # with max_time, as many as the budget allows, the budget then being the run's plan.
    epochs: int | None = None
    batch_size: int = 32  # more, smaller steps learn faster per minute than 64 on a CPU
    seq_length: int = 100  # characters per training window
    shape: ModelConfig = field(default_factory=ModelConfig)  # the network, its vocabulary aside
    weight_drop: float = 0.0  # DropConnect on the LSTM recurrent kernels, a new mask each step
    embedding_dropout: float = 0.0  # share of characters dropped from the embedding each step
    weight_decay: float = 0.2  # decoupled (AdamW-style) decay of the weight matrices, x lr
    learning_rate: float = 4e-3  # Adam's peak rate
    lr_schedule: str = "auto"  # one of LR_SCHEDULES; textgen.training.trainer.schedule_of
    clip_norm: float | None = 5.0  # global gradient-norm clip; None disables it
    weight_average: float = 0.998  # EMA decay of the weights validated and kept as best; 0: off
    validation_split: float = 0.1  # fraction held out from the END of the text
    validation_context: int = DEFAULT_CONTEXT  # characters read before each scored window
    seed: int = 0
    # Wall-clock budget in seconds: of this invocation when epochs is given; without epochs, of
    # the whole run (its schedule spans it, and a resumed run goes on to its end).
    max_time: float | None = None
    patience: int | None = None  # stop after this many epochs without a better val loss
    checkpoint_every: float = 60.0  # seconds between mid-epoch checkpoints
    max_vocab: int | None = None  # keep only the most frequent characters
    encoding: str = "utf-8"
    errors: str = "strict"  # or "replace": how to treat undecodable bytes
    sample_every: int = 1  # print (and log) a sample after every N epochs; 0: never
    tensorboard: bool = True  # write TensorBoard event files under RUN/tensorboard
    precision: str = "auto"  # of the large matrix products: "auto", "float32" or "bfloat16"

    def __post_init__(self) -> None:
        # 0 turns clipping off, as --clip-norm 0 and weight_average=0 do; one spelling is kept.
        if self.clip_norm == 0:
            self.clip_norm = None

    def validate(self) -> None:
        """Raise TextgenError for settings that cannot work."""
        checks = [
            (self.epochs is None or self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.seq_length >= 1, "sequence length must be at least 1"),
            (self.validation_context >= 0, "validation context must be at least 0"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "bad learning rate"),
            (self.lr_schedule in LR_SCHEDULES, f"lr schedule: one of {', '.join(LR_SCHEDULES)}"),
            (0.0 <= self.weight_drop < 1.0, "weight drop must be in [0, 1)"),
            (0.0 <= self.embedding_dropout < 1.0, "embedding dropout must be in [0, 1)"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay), "bad weight decay"),
            (self.clip_norm is None or self.clip_norm > 0, "clip norm must be positive"),
            (0.0 <= self.weight_average < 1.0, "weight average decay must be in [0, 1)"),
            (self.max_time is None or self.max_time > 0, "max time must be positive"),
            (self.patience is None or self.patience >= 1, "patience must be at least 1"),
            (self.checkpoint_every > 0, "checkpoint interval must be positive"),
            (self.errors in ("strict", "replace"), "errors must be 'strict' or 'replace'"),
            (0.0 <= self.validation_split < 1.0, "validation split must be in [0, 1)"),
            (self.sample_every >= 0, "sample-every must be at least 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TextgenError(message)

    @property
    def budget_is_plan(self) -> bool:
        """True when a time budget and no epoch count decide how long the run trains."""
        return self.epochs is None and self.max_time is not None

    @property
    def epoch_limit(self) -> int | None:
        """The epochs the run stops at, or None when only its budget ends it."""
        if self.epochs is not None:
            return self.epochs
        return None if self.max_time is not None else DEFAULT_EPOCHS

    def model(self, vocab_size: int) -> ModelConfig:
        """The shape of the network these settings train on a vocabulary of ``vocab_size``."""
        return self.shape.for_vocab(vocab_size)

    def noise(self) -> Noise:
        """The training-time noise these settings ask of the forward pass."""
        return Noise(self.shape.dropout, self.weight_drop, self.embedding_dropout)

    def to_json(self) -> dict[str, Any]:
        """The settings as ``config.json`` keeps them: flat, the shape's among the others."""
        data: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "shape":
                data.update((name, getattr(self.shape, name)) for name in MODEL_SETTINGS)
            else:
                data[f.name] = getattr(self, f.name)
        return data

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainConfig:
        """Build from a dict of flat settings; an unknown key is a TextgenError."""
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise TextgenError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**settings)


def _flat_shape(init):
    """Let ``TrainConfig`` take the shape's fields flat, over the ``shape`` it is given."""

    @functools.wraps(init)
    def __init__(self, *args, **settings) -> None:
        flat = {name: settings.pop(name) for name in MODEL_SETTINGS if name in settings}
        init(self, *args, **settings)
        if flat:
            self.shape = replace(self.shape, **flat)

    return __init__


def _read_flat(name: str) -> property:
    return property(lambda self: getattr(self.shape, name), doc=f"``shape.{name}``")


TrainConfig.__init__ = _flat_shape(TrainConfig.__init__)
for _name in MODEL_SETTINGS:
    setattr(TrainConfig, _name, _read_flat(_name))

SETTINGS = tuple(TrainConfig().to_json())
"""Every training setting's name, as ``config.json`` and ``train()`` spell them."""


# Settings that fix the network's shape or the data order: a resumed run must keep them.
LOCKED_ON_RESUME = (
    "embedding_dim",
    "units",
    "num_layers",
    "cell",
    "batch_size",
    "seq_length",
    "validation_split",
    "validation_context",  # best.npz is chosen by a loss that must be measured one way
    "seed",
    "max_vocab",
)


@dataclass
class TrainState:
    """Where the training loop stands; saved in every checkpoint so a run resumes exactly."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # batches done in the whole run
    loss_sum: float = 0.0  # training loss summed over the current epoch's batches
    best_val_loss: float | None = None
    epochs_without_improvement: int = 0
    seconds: float = 0.0  # training time over all invocations

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        """Read a state saved by ``to_json``; keys it does not know are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RunConfig:
    """Everything ``config.json`` records: the model's shape, the training settings, the corpus."""

    model: ModelConfig
    training: TrainConfig
    corpus: dict[str, Any] = field(default_factory=dict)  # source, characters, sha256
    # The trained model this run started from (``textgen.training.finetune.Source.record``), if any.
    init_from: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (the layout of ``config.json``)."""
        data = {
            "model": asdict(self.model),
            "training": self.training.to_json(),
            "corpus": self.corpus,
        }
        if self.init_from is not None:
            data["init_from"] = self.init_from
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> RunConfig:
        """Read ``config.json``'s content; anything malformed is a CheckpointError."""
        try:
            saved = dict(data.get("training", {}))
            # Release 0.1.0 validated every window from a zero state.
            saved.setdefault("validation_context", 0)
            # Runs saved before the precision setting trained in float32 only.
            saved.setdefault("precision", "float32")
            # And without weight decay.
            saved.setdefault("weight_decay", 0.0)
            # And on a cosine schedule, which every saved run names unless written by hand.
            saved.setdefault("lr_schedule", "cosine")
            training = TrainConfig(**{k: v for k, v in saved.items() if k in SETTINGS})
            init_from = data.get("init_from")
            corpus = dict(data.get("corpus", {}))
            return cls(ModelConfig(**data["model"]), training, corpus, init_from)
        except (KeyError, TypeError, ValueError, TextgenError) as err:
            raise CheckpointError(f"{where} is not a textgen run config ({err})") from None
