"""The batching scheduler: seed parity with Sampler.generate_batch, rows joining and leaving."""

from __future__ import annotations

import threading
import time

import pytest

from textgen.sample.options import SamplingOptions
from textgen.sample.sampler import Sampler
from textgen.serve.batching import PREFILL_CHUNK, SHORT_PROMPT, Busy, Job, Scheduler

SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=0.0),
    dict(temperature=1.2, top_p=0.8),
    dict(temperature=1.0, stop=("e ",)),
]


@pytest.fixture
def scheduler(trained_run):
    sizes: list[int] = []
    sched = Scheduler(Sampler.from_checkpoint(trained_run), max_streams=64, on_step=sizes.append)
    sched.sizes = sizes
    yield sched
    sched.close()


def _collect(job: Job, timeout: float = 30.0) -> list[str]:
    texts = [[] for _ in range(job.n)]
    end = time.monotonic() + timeout
    while not job.done or job._pieces:
        assert time.monotonic() < end, "job did not finish"
        for piece in job.take(timeout=1.0):
            texts[piece.index].append(piece.text)
    return ["".join(t) for t in texts]


@pytest.mark.parametrize("settings", SETTINGS)
def test_choice_i_equals_sample_i_of_generate_batch(trained_run, scheduler, settings):
    reference = Sampler.from_checkpoint(trained_run)
    options = dict(settings)
    stop = options.pop("stop", ())
    want = reference.generate_batch(3, 60, prime="The ", seed=11, stop=stop, **options)
    job = Job(
        scheduler.prompt_ids("The "), SamplingOptions(seed=11, stop=stop, **options), n=3,
        max_tokens=60,
    )  # fmt: skip
    assert scheduler.generate(job) == want


def test_batched_jobs_equal_their_solo_answers(trained_run, scheduler):
    reference = Sampler.from_checkpoint(trained_run)
    jobs = []
    for i in range(12):
        options = dict(SETTINGS[i % len(SETTINGS)])
        stop = options.pop("stop", ())
        prompt = ["", "A", "The dog "][i % 3]
        want = reference.generate_batch(1, 40 + i, prime=prompt, seed=i, stop=stop, **options)[0]
        job = Job(
            scheduler.prompt_ids(prompt), SamplingOptions(seed=i, stop=stop, **options),
            max_tokens=40 + i,
        )  # fmt: skip
        jobs.append((job, want))
    for job, _ in jobs:
        scheduler.submit(job)
    for job, want in jobs:
        assert _collect(job) == [want]
    assert max(scheduler.sizes) > 1  # they really shared the batch


def test_long_and_short_prompts_together_equal_their_solo_answers(trained_run, scheduler):
    # A long prompt is fed on its own in chunks; short ones are fed inside the batch.
    reference = Sampler.from_checkpoint(trained_run)
    long_prompt = ("The dog saw a cat. " * 40)[: 2 * PREFILL_CHUNK + 7]
    prompts = [long_prompt, "A", "x" * SHORT_PROMPT, long_prompt[:40], "The "]
    jobs = []
    for i, prompt in enumerate(prompts):
        want = reference.generate_batch(2, 50, prime=prompt, seed=i, temperature=0.8)
        options = SamplingOptions(seed=i, temperature=0.8)
        jobs.append((Job(scheduler.prompt_ids(prompt), options, n=2, max_tokens=50), want))
    for job, _ in jobs:
        scheduler.submit(job)
    for job, want in jobs:
        assert _collect(job) == want
    assert max(scheduler.sizes) > 2


def test_cancelled_job_leaves_the_batch(scheduler):
    long_job = scheduler.submit(
        Job(scheduler.prompt_ids("A"), SamplingOptions(seed=1), n=2, max_tokens=10**7)
    )
    other = scheduler.submit(
        Job(scheduler.prompt_ids("B"), SamplingOptions(seed=2), max_tokens=10**7)
    )
    deadline = time.monotonic() + 10
    while not (scheduler.sizes and scheduler.sizes[-1] == 3):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    long_job.cancel()
    while scheduler.active_streams != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    seen = len(scheduler.sizes)
    time.sleep(0.05)
    assert set(scheduler.sizes[seen:]) == {1}
    assert scheduler.reserved_streams == 1
    other.cancel()


def test_full_scheduler_refuses_and_frees_rows(scheduler):
    job = scheduler.submit(
        Job(scheduler.prompt_ids("A"), SamplingOptions(seed=1), n=60, max_tokens=10**7)
    )
    with pytest.raises(Busy):
        scheduler.submit(Job(scheduler.prompt_ids("A"), n=5, max_tokens=5))
    job.cancel()
    deadline = time.monotonic() + 10
    while scheduler.reserved_streams:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert len(scheduler.generate(Job(scheduler.prompt_ids("A"), n=5, max_tokens=5))) == 5


def test_wakes_the_caller_once_per_batch_of_pieces(scheduler):
    calls = []
    woke = threading.Event()
    job = Job(scheduler.prompt_ids("A"), SamplingOptions(seed=3), max_tokens=200)
    job.on_ready = lambda: (calls.append(1), woke.set())
    scheduler.submit(job)
    assert woke.wait(10)
    time.sleep(0.2)  # the whole job finishes meanwhile, unread
    assert len(calls) == 1
    text = "".join(p.text for p in job.take())
    assert len(text) == 200 and job.done


def test_close_ends_running_jobs(trained_run):
    sched = Scheduler(Sampler.from_checkpoint(trained_run))
    job = sched.submit(Job(sched.prompt_ids("A"), max_tokens=10**7))
    time.sleep(0.1)
    sched.close()
    pieces = job.take(timeout=1)
    assert job.done and pieces[-1].finish_reason == "length"


@pytest.mark.parametrize("stop", [(), ("e ",)])
def test_scored_jobs_score_as_the_sampler_does(trained_run, scheduler, stop):
    reference = Sampler.from_checkpoint(trained_run).scored_batch(
        4, 50, prime="A", seed=3, temperature=1.2, stop=stop
    )
    job = Job(scheduler.prompt_ids("A"), SamplingOptions(seed=3, temperature=1.2, stop=stop), n=4,
              max_tokens=50, score=True)  # fmt: skip
    scheduler.submit(job)
    texts, scores = [""] * 4, [None] * 4
    deadline = time.monotonic() + 30
    while not job.drained:
        assert time.monotonic() < deadline
        for piece in job.take(timeout=1.0):
            texts[piece.index] += piece.text
            if piece.finish_reason is not None:
                scores[piece.index] = piece.score
    assert texts == [r.text for r in reference]
    assert scores == pytest.approx([r.score for r in reference], abs=1e-5)
