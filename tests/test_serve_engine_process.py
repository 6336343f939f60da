"""The scheduler in a child process: the same answers as in a thread, and every way a job ends."""

from __future__ import annotations

import time

import pytest

from textgen.run import open_run
from textgen.sample.options import SamplingOptions
from textgen.sample.sampler import Sampler
from textgen.serve.batching import Busy, Job, Scheduler
from textgen.serve.engine_process import EngineProcess, EngineStopped


@pytest.fixture(scope="module")
def engine(trained_run):
    process = EngineProcess(open_run(trained_run), max_streams=64)
    yield process
    process.close()


@pytest.fixture(scope="module")
def in_thread(trained_run):
    scheduler = Scheduler(Sampler.from_checkpoint(trained_run), max_streams=64)
    yield scheduler
    scheduler.close()


def _pieces(job: Job, timeout: float = 30.0) -> list:
    """Every piece of a job, in order, as plain tuples."""
    pieces, end = [], time.monotonic() + timeout
    while not job.drained:
        assert time.monotonic() < end, "the job did not finish"
        pieces += job.take(timeout=1.0)
    return [(p.index, p.text, p.finish_reason, p.logprobs, p.score) for p in pieces]


def _wait_for(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _by_choice(pieces: list) -> dict:
    """Each choice's text, finish reason, log-probabilities and score, its pieces joined (the
    child sends plain characters several to a piece; choices may interleave differently)."""
    choices: dict[int, list] = {}
    for index, text, finish, logprobs, score in pieces:
        choice = choices.setdefault(index, ["", None, None, None])
        assert choice[1] is None, "a piece after the choice's last"
        choice[0] += text
        choice[1], choice[3] = finish, score
        if logprobs is not None:
            choice[2] = (choice[2] or []) + logprobs
    return choices


@pytest.mark.parametrize(
    "options, extra",
    [
        (dict(temperature=1.0), {}),
        (dict(temperature=0.7, top_k=5, stop=("e ",)), {}),
        (dict(temperature=0.0), dict(logprobs=3)),
        (dict(temperature=1.2, stop=("e ",)), dict(score=True)),
    ],
)
def test_pieces_equal_the_in_thread_schedulers(engine, in_thread, options, extra):
    def job() -> Job:
        ids = engine.prompt_ids("The ")
        return Job(ids, SamplingOptions(seed=5, **options), n=3, max_tokens=80, **extra)

    theirs = in_thread.submit(job())
    ours = engine.submit(job())
    assert _by_choice(_pieces(ours)) == _by_choice(_pieces(theirs))


def test_plain_characters_cross_several_to_a_piece(engine):
    job = engine.submit(Job(engine.prompt_ids("The "), SamplingOptions(seed=1), max_tokens=300))
    pieces = _pieces(job)
    assert sum(len(p[1]) for p in pieces) == 300
    assert len(pieces) < 300
    assert [p[2] for p in pieces] == [None] * (len(pieces) - 1) + ["length"]


def test_pieces_with_logprobs_cross_one_to_a_character(engine):
    job = engine.submit(Job(engine.prompt_ids("The "), max_tokens=50, logprobs=2))
    pieces = _pieces(job)
    assert len(pieces) == 50
    assert all(len(p[3]) == len(p[1]) == 1 for p in pieces)


def test_unseeded_job_draws_from_the_seed_it_was_given(engine, in_thread):
    ours = Job(engine.prompt_ids("A"), max_tokens=60)
    theirs = Job(engine.prompt_ids("A"), SamplingOptions(seed=ours.seed), max_tokens=60)
    assert engine.generate(ours) == in_thread.generate(theirs)


def test_concurrent_jobs_share_the_batch_and_keep_their_answers(engine, in_thread):
    jobs = [
        Job(engine.prompt_ids("AB"[i % 2]), SamplingOptions(seed=i), max_tokens=400)
        for i in range(12)
    ]
    seen = 0
    for job in jobs:
        engine.submit(job)
    while not all(job.done for job in jobs):
        seen = max(seen, engine.active_streams)
        time.sleep(0.002)
    assert seen > 2
    for i, job in enumerate(jobs):
        texts = ["".join(p[1] for p in _pieces(job))]
        again = Job(engine.prompt_ids("AB"[i % 2]), SamplingOptions(seed=i), max_tokens=400)
        assert texts == in_thread.generate(again)
    _wait_for(lambda: engine.reserved_streams == 0)


def test_cancelled_job_ends_and_frees_its_rows(engine):
    job = engine.submit(Job(engine.prompt_ids("A"), n=2, max_tokens=10**7))
    _wait_for(lambda: engine.active_streams == 2)
    job.cancel()
    pieces = _pieces(job)
    assert sorted(p[2] for p in pieces if p[2]) == ["length", "length"]
    _wait_for(lambda: engine.reserved_streams == 0 and engine.active_streams == 0)


def test_full_engine_refuses_then_frees_rows(engine):
    job = engine.submit(Job(engine.prompt_ids("A"), n=60, max_tokens=10**7))
    with pytest.raises(Busy):
        engine.submit(Job(engine.prompt_ids("A"), n=5, max_tokens=5))
    job.cancel()
    _wait_for(lambda: engine.reserved_streams == 0)
    assert len(engine.generate(Job(engine.prompt_ids("A"), n=5, max_tokens=5))) == 5


def test_deadline_ends_a_job_as_length(engine):
    start = time.monotonic()
    job = engine.submit(Job(engine.prompt_ids("A"), max_tokens=10**7, timeout=0.3))
    pieces = _pieces(job)
    assert pieces[-1][2] == "length"
    assert 0.3 <= time.monotonic() - start < 5


def test_close_ends_running_jobs(trained_run):
    process = EngineProcess(open_run(trained_run))
    job = process.submit(Job(process.prompt_ids("A"), n=2, max_tokens=10**7))
    _wait_for(lambda: process.active_streams == 2)
    process.close()
    assert [p[2] for p in _pieces(job) if p[2]] == ["length", "length"]
    assert not process._process.is_alive()
    with pytest.raises(EngineStopped):
        process.submit(Job(process.prompt_ids("A"), max_tokens=5))
    assert process.failure is None  # closed, not failed


def test_a_dead_engine_ends_open_jobs_and_refuses_new_ones(trained_run):
    process = EngineProcess(open_run(trained_run))
    job = process.submit(Job(process.prompt_ids("A"), n=3, max_tokens=10**7))
    _wait_for(lambda: process.active_streams == 3)
    process._process.kill()
    assert sorted(p[2] for p in _pieces(job) if p[2]) == ["length"] * 3
    code = process._process.exitcode  # -9 (SIGKILL) on POSIX
    with pytest.raises(EngineStopped, match=rf"stopped \(exit code {code}\)"):
        process.submit(Job(process.prompt_ids("A"), max_tokens=5))
    assert process.failure == f"the engine process stopped (exit code {code})"
    assert code != 0
    assert process.reserved_streams == 0
    process.close()  # closing a dead engine is quiet


def test_rows_are_free_once_a_job_is_seen_done(engine):
    # A client told its answer ended may send the next request at once: it must find the rows.
    seen = []
    job = Job(engine.prompt_ids("A"), n=64, max_tokens=3)
    job.on_done = lambda: seen.append(engine.reserved_streams)  # as the server hears of the end
    engine.submit(job)
    _wait_for(lambda: job.done, timeout=30)
    assert seen == [0]
