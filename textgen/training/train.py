"""``train()``: a corpus in, a self-contained run directory out, on one process or a cluster.

The pieces each have their own module: the run directory's protocol, new or resumed
(``textgen.run``: ``check_new_run``, ``create_run``, ``resume_run``, ``writing``), the steps
(``textgen.training.steps``) and the loop (``textgen.training.trainer``). This module puts them
together: the settings, the corpus, the callbacks, and, on a cluster
(``textgen.training.distribute``), the chief's settings, vocabulary and checkpoint handed to the
other workers, which write nothing. One process on its own is a cluster of one whose broadcasts
return their input.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgen import run as rundir
from textgen.checkpoint import Checkpoint
from textgen.config import RunConfig, TrainConfig
from textgen.corpus import DEFAULT_CORPUS, check_exists, load_corpus
from textgen.errors import CheckpointError, OptionsError, TextgenError, VocabularyError
from textgen.model import build_model
from textgen.tokenizer import Tokenizer
from textgen.training.callbacks import Callback, EarlyStopping
from textgen.training.distribute import choose_path, make_cluster
from textgen.training.sizing import size_for_budget, sizing_applies
from textgen.training.steps import build_replica_train_step, build_train_step, make_optimizer
from textgen.training.trainer import (
    HISTORY_FIELDS,
    STOPS,
    Trainer,
    TrainingInterrupted,
    TrainResult,
    learning_rate_at,
)
from textgen.training.windows import split_ids

__all__ = [
    "HISTORY_FIELDS",
    "STOPS",
    "Callback",
    "Trainer",
    "TrainResult",
    "TrainingInterrupted",
    "build_replica_train_step",
    "build_train_step",
    "default_run_dir",
    "learning_rate_at",
    "make_optimizer",
    "train",
]


def default_run_dir(corpus_name: str) -> Path:
    """``checkpoints/<corpus name>``: where a run lives unless told otherwise."""
    stem = Path(str(corpus_name).rstrip("/")).stem or "corpus"
    return rundir.DEFAULT_ROOT / stem


@dataclass
class _Job:
    """What one call of ``train`` asks for, as every worker was given it."""

    corpus: str | Path | None
    run_dir: Path
    settings: dict[str, Any]  # fields of TrainConfig
    resume: bool
    source: Any  # the textgen.training.finetune.Source a new run starts from, or None
    device: str
    callbacks: Sequence[Callback]
    echo: Callable[[str], None]
    progress: bool


@dataclass
class _Start:
    """Where a worker's training starts: the run's config, vocabulary and split corpus, and
    (on the chief) the checkpoint it resumes from or the trained model it starts from."""

    run: RunConfig
    tokenizer: Tokenizer
    split: Any  # textgen.training.windows.split_ids's answer
    resumed: bool
    init: bool  # a new run from a trained model's weights
    checkpoint: Checkpoint | None = None  # the chief's, when resuming
    source: Any = None  # the chief's textgen.training.finetune.Source, when init
    sized: Any = None  # the chief's textgen.training.sizing answer, when its budget chose the shape


def train(
    corpus: str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
    distribute: str = "none",
    device: str = "auto",
    init_from: str | Path | None = None,
    **settings,
) -> TrainResult:
    """Train a model on ``corpus`` and keep it in ``run_dir`` (default ``checkpoints/<name>``).

    Args:
        corpus: a text file, a folder, a glob or a corpus name (see ``textgen.corpus``); the
            default is ``DEFAULT_CORPUS`` (pydocs), or the run's own corpus when resuming.
        run_dir: the run directory; it must not already hold a run unless ``resume`` is set.
        resume: continue the run in ``run_dir``; shape and data-order settings must match.
        progress: show a tqdm progress bar.
        echo: where per-epoch summaries go.
        callbacks: ``Callback`` objects told of every batch and epoch.
        distribute: ``none``, ``mirrored`` or ``multi-worker`` (see
        ``textgen.training.distribute``);
            on a cluster, every worker calls ``train`` with the same arguments and only worker
            0 writes ``run_dir``.
        device: ``auto``, ``cpu`` or ``gpu``: which recurrent path trains (``choose_path``).
        init_from: start a new run from this trained run directory or shipped model (such as
            ``base``), with its shape and a vocabulary merged from both
            (``textgen.training.finetune``).
        **settings: fields of ``TrainConfig``; on resume, the saved values fill the rest.

    Returns:
        A TrainResult. Ctrl-C saves a checkpoint and raises TrainingInterrupted. A second
        trainer on the same run directory, or a failed write, raises a TextgenError; so does
        the loss of a worker of a cluster.
    """
    if run_dir is None:
        run_dir = default_run_dir(corpus or DEFAULT_CORPUS)
    run_dir = Path(run_dir)
    source = None
    if init_from is not None:
        from textgen.training.finetune import open_source, shape_settings

        if resume:
            raise OptionsError("--init-from starts a new run; it cannot be used with --resume")
        source = open_source(init_from)
        settings = {**settings, **shape_settings(source, settings)}
    if not resume:
        TrainConfig.from_settings(settings).validate()  # bad settings fail before any file
    if corpus is not None or not resume:
        check_exists(corpus or DEFAULT_CORPUS)  # so does a missing corpus
    cluster = make_cluster(distribute)  # before any other TensorFlow op
    job = _Job(corpus, run_dir, settings, resume, source, device, callbacks, echo, progress)
    owning = rundir.writing(run_dir) if cluster.is_chief else contextlib.nullcontext()
    with owning, cluster.lost_contact(run_dir):
        return _train(job, cluster)


def _train(job: _Job, cluster) -> TrainResult:
    """Train on this worker, its place in the cluster given; the chief holds the lock."""
    if cluster.is_chief:
        start, shared = _chief_start(job, cluster)
        cluster.broadcast_text(json.dumps(shared))
    else:
        start = _worker_start(job, json.loads(cluster.broadcast_text(None)), cluster.worker)
    config = start.run.training
    watchers = _watchers(config, start.tokenizer, job) if cluster.is_chief else []
    stops = [EarlyStopping(config.patience)] if config.patience else []
    trainer = _make_trainer(start, job, cluster, [*watchers, *job.callbacks, *stops])
    if start.checkpoint is not None:
        trainer.restore(start.checkpoint)
    elif start.source is not None:
        from textgen.training.finetune import transfer_weights

        trainer.start_from(transfer_weights(start.source, start.tokenizer, start.split.train))
    if start.resumed or start.init:
        trainer.share_checkpoint()  # the other workers start where the chief starts
    if start.sized is not None:
        trainer.state.seconds = start.sized.seconds  # timing the sizes spent part of the budget
    if cluster.is_chief:
        if start.resumed:
            rundir.write_config(job.run_dir, start.run)
        else:
            rundir.create_run(
                job.run_dir, start.run, start.tokenizer, lambda: trainer.save(with_best=True)
            )
    return trainer.run()


def _chief_start(job: _Job, cluster) -> tuple[_Start, dict]:
    """The run to train, new or resumed (``textgen.run``'s checks), with its corpus read; and
    what the other workers of a cluster need of it."""
    run_dir = job.run_dir
    resumed = rundir.resume_run(run_dir, job.settings) if job.resume else None
    if resumed is None:
        rundir.check_new_run(run_dir)
        config = TrainConfig.from_settings(job.settings)
        corpus = job.corpus
    else:
        config = resumed.config.training
        corpus = job.corpus or resumed.config.corpus.get("source")
    corpus = str(corpus or DEFAULT_CORPUS)
    source = job.source
    try:
        prepared = load_corpus(
            corpus,
            cache_dir=run_dir.parent / rundir.CACHE_DIR,
            encoding=config.encoding,
            errors=config.errors,
            max_vocab=config.max_vocab,
            tokenizer=resumed.tokenizer if resumed is not None else None,
            base=source.run.tokenizer if source is not None else None,
        )
        split = split_ids(prepared.ids, config.validation_split, config.seq_length)
    except VocabularyError as err:
        if resumed is not None:
            raise CheckpointError(f"cannot resume {run_dir}: {err}") from None
        raise
    tokenizer = prepared.tokenizer
    sized = None
    if resumed is not None:
        run_config = resumed.config
    else:
        if not cluster.replicated and sizing_applies(job.settings, resume=False, init_from=source):
            config, sized = _sized(config, tokenizer, job)
        record = {"source": corpus, "characters": int(len(prepared.ids)), "sha256": prepared.sha256}
        init_record = source.record() if source is not None else None
        run_config = RunConfig(config.model(tokenizer.vocab_size), config, record, init_record)
    checkpoint = resumed.checkpoint if resumed is not None else None
    start = _Start(run_config, tokenizer, split, resumed is not None, source is not None)
    start.checkpoint, start.source, start.sized = checkpoint, source, sized
    shared = {"run": run_config.to_json(), "tokenizer": tokenizer.to_json()}
    shared.update(sha256=prepared.sha256, resume=resumed is not None, init=source is not None)
    return start, shared


def _sized(config: TrainConfig, tokenizer: Tokenizer, job: _Job):
    """The settings with the shape that a budget with no shape given suits on this machine,
    and the sizing's answer; the settings as they are on the stock (GPU) path."""
    from textgen.training.distribute import visible_gpus
    from textgen.training.step_plan import plan_for_this_machine

    if choose_path(job.device, visible_gpus()) != "fast":
        return config, None
    plan = plan_for_this_machine(config.precision)

    def build_step(shape):
        model = build_model(shape)
        return build_train_step(model, make_optimizer(config), config.noise(), plan=plan)

    keep = "dropout" in job.settings
    config, sized = size_for_budget(config, tokenizer.vocab_size, build_step, keep)
    job.echo(f"{sized.describe()}, dropout {config.dropout:g}")
    return config, sized


def _worker_start(job: _Job, shared: dict, worker: int) -> _Start:
    """A worker other than the chief: the chief's settings and vocabulary, checked against its
    own copy of the corpus.

    Its ids are cached in the system's temporary folder, not beside the run directory, which
    may be the chief's disk or storage that only the chief writes.
    """
    run_config = RunConfig.from_json(shared["run"], "the chief's run config")
    config = run_config.training
    tokenizer = Tokenizer.from_json(shared["tokenizer"])
    prepared = load_corpus(
        str(job.corpus or run_config.corpus.get("source") or DEFAULT_CORPUS),
        cache_dir=Path(tempfile.gettempdir()) / "textgen-cache",
        encoding=config.encoding,
        errors=config.errors,
        max_vocab=config.max_vocab,
        tokenizer=tokenizer if shared["resume"] else None,  # as the chief read it
    )
    if prepared.sha256 != shared["sha256"] or prepared.tokenizer != tokenizer:
        raise TextgenError(
            f"worker {worker}'s corpus differs from the chief's (sha256 "
            f"{prepared.sha256[:12]}... against {shared['sha256'][:12]}...); give every worker "
            "the same text"
        )
    split = split_ids(prepared.ids, config.validation_split, config.seq_length)
    return _Start(run_config, tokenizer, split, shared["resume"], bool(shared.get("init")))


def _make_trainer(start: _Start, job: _Job, cluster, callbacks: list[Callback]) -> Trainer:
    """The model and its Trainer, built in the cluster's scope so its variables are mirrored."""
    from textgen.backend import keras
    from textgen.training.distribute import visible_gpus

    config = start.run.training
    path = choose_path(job.device, visible_gpus())
    keras.utils.set_random_seed(config.seed)
    with cluster.scope():
        model = build_model(config.model(start.tokenizer.vocab_size))
        return Trainer(
            model,
            config,
            start.split,
            job.run_dir,
            cluster=cluster,
            path=path,
            callbacks=callbacks,
            echo=job.echo,
            progress=job.progress,
        )


def _watchers(config: TrainConfig, tokenizer: Tokenizer, job: _Job) -> list[Callback]:
    """The callbacks the chief adds unless the run's settings turn them off."""
    from textgen.training.watch import EpochSample, TensorBoardLogger

    watchers: list[Callback] = []
    sample = None
    if config.sample_every:
        sample = EpochSample(tokenizer, config.cell, config.seed, config.sample_every, job.echo)
        watchers.append(sample)
    if config.tensorboard:
        chars = config.batch_size * config.seq_length
        watchers.append(TensorBoardLogger(job.run_dir / rundir.TENSORBOARD, chars, sample))
    return watchers
