"""The official openai client against a live ``textgen serve``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest
from conftest import API_KEY, start_server, stop_server

from textgen.sample.sampler import Sampler

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def client(live_server):
    base, _ = live_server
    with openai.OpenAI(
        base_url=f"{base}/v1", api_key=API_KEY, timeout=TIMEOUT, max_retries=0
    ) as client:
        yield client


@pytest.fixture(scope="module")
def model(live_server):
    return live_server[1]


def _sample(run_dir, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "textgen", "sample", "--checkpoint", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_models_list(client, model):
    assert [m.id for m in client.models.list().data] == [model]


def test_seed_parity_with_textgen_sample(client, model, trained_run):
    answer = client.completions.create(
        model=model, prompt="The ", max_tokens=60, seed=5, temperature=0.8
    )
    printed = _sample(
        trained_run, "--prime", "The ", "--length", "60", "--seed", "5", "--temperature", "0.8"
    )
    assert printed == "The " + answer.choices[0].text + "\n"
    assert answer.choices[0].finish_reason == "length"
    assert answer.object == "text_completion"
    assert answer.usage.completion_tokens == 60 and answer.usage.prompt_tokens == 4


def test_choice_i_is_sample_i(client, model, trained_run):
    answer = client.completions.create(
        model=model, prompt="A", max_tokens=30, seed=9, n=3, extra_body={"top_k": 6}
    )
    lines = _sample(
        trained_run,
        *("--prime", "A", "--length", "30", "--seed", "9", "--top-k", "6"),
        *("--num-samples", "3", "--format", "jsonl"),
    ).splitlines()
    assert [c.text for c in answer.choices] == [json.loads(line)["text"] for line in lines]
    assert [c.index for c in answer.choices] == [0, 1, 2]


def test_stream_gives_the_same_text(client, model):
    plain = client.completions.create(model=model, prompt="x", max_tokens=80, seed=2)
    parts, reasons = [], []
    for chunk in client.completions.create(
        model=model, prompt="x", max_tokens=80, seed=2, stream=True
    ):
        parts.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(parts) == plain.choices[0].text
    assert reasons[-1] == "length" and set(reasons[:-1]) <= {None}


def test_stop_string_ends_the_choice(client, model, trained_run):
    answer = client.completions.create(model=model, prompt="", max_tokens=300, seed=4, stop="e")
    want = Sampler.from_checkpoint(trained_run).generate(300, seed=4, stop=["e"])
    assert answer.choices[0].text == want
    assert "e" not in want and answer.choices[0].finish_reason == "stop"


def test_prompt_list_echo_and_logprobs(client, model):
    answer = client.completions.create(
        model=model, prompt=["ab", "c"], max_tokens=5, n=2, echo=True, logprobs=3, seed=1
    )
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert all(c.text.startswith(p) for c, p in zip(answer.choices, ["ab", "ab", "c", "c"]))
    lp = answer.choices[0].logprobs
    assert len(lp.tokens) == 5 and all(len(top) == 3 for top in lp.top_logprobs)
    assert "".join(lp.tokens) == answer.choices[0].text[2:]
    assert all(v <= 0 for v in lp.token_logprobs)


def test_best_of_returns_the_n_best_of_its_seeded_choices(client, model, trained_run):
    options = dict(max_tokens=40, seed=6, temperature=1.3)
    answer = client.completions.create(
        model=model, prompt="The ", n=2, best_of=5, logprobs=0, **options
    )
    sampler = Sampler.from_checkpoint(trained_run)
    want = sampler.generate_batch(2, 40, prime="The ", best_of=5, seed=6, temperature=1.3)
    assert [c.text for c in answer.choices] == want
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.usage.completion_tokens == 5 * 40  # every generated choice counts
    # The chosen characters' log-probabilities rank the choices: theirs are the two best means.
    means = [sum(c.logprobs.token_logprobs) / 40 for c in answer.choices]
    scored = sampler.scored_batch(5, 40, prime="The ", seed=6, temperature=1.3)
    scores = sorted(s.score for s in scored)
    assert means == pytest.approx(scores[::-1][:2], abs=1e-5)
    # The five choices themselves are samples 0..4 of the same seed.
    plain = client.completions.create(model=model, prompt="The ", n=5, **options)
    assert set(want) <= {c.text for c in plain.choices}
    # best_of equal to n changes nothing, and may stream.
    same = client.completions.create(model=model, prompt="The ", n=2, best_of=2, **options)
    assert [c.text for c in same.choices] == [c.text for c in plain.choices[:2]]
    chunks = client.completions.create(
        model=model, prompt="The ", best_of=1, stream=True, **options
    )
    assert "".join(chunk.choices[0].text for chunk in chunks) == plain.choices[0].text


@pytest.mark.parametrize(
    "options",
    [
        dict(max_tokens=-1),
        dict(max_tokens=10**9),
        dict(temperature=5.0),
        dict(temperature=-0.5),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(n=0),
        dict(logprobs=9),
        dict(seed=-3),
        dict(prompt="snow \u2603"),
        dict(prompt=[]),
        dict(extra_body={"top_k": 0}),
        dict(best_of=0),
        dict(best_of=1, n=2),
        dict(best_of=3, stream=True),
        dict(best_of=30, prompt=["a", "b"]),
        dict(stop=""),
    ],
)
def test_bad_values_are_400(client, model, options):
    options = {"prompt": "a", **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=model, **options)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "invalid_request_error"


def test_a_request_becomes_sampling_options_in_one_call():
    from textgen.sample.options import SamplingOptions
    from textgen.serve.schema import ApiError, CompletionRequest

    body = CompletionRequest(model="m", temperature=None, top_p=1.0, top_k=5, seed=3, stop="\n")
    assert body.to_sampling_options(("User:",), drop_unknown=True) == SamplingOptions(
        temperature=1.0, top_k=5, top_p=None, seed=3, drop_unknown=True, stop=("\n", "User:")
    )
    with pytest.raises(ApiError, match="at most 4 stop strings"):
        CompletionRequest(model="m", stop=list("abcde")).to_sampling_options()


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-run", prompt="a")


def test_wrong_key_is_401(live_server, model):
    base, _ = live_server
    wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", timeout=TIMEOUT, max_retries=0)
    with wrong, pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    answer = httpx.get(f"{base}/v1/models", timeout=TIMEOUT)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_oversized_body_is_413(live_server, model):
    base, _ = live_server
    body = {"model": model, "prompt": "a" * 30000}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answer = httpx.post(f"{base}/v1/completions", json=body, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 413 and "error" in answer.json()


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_a_413_that_urllib_reads(live_server, model, chunked):
    # urllib sends the whole body before it reads the answer: a 413 sent without reading the
    # body reached it as "connection reset by peer".
    base, _ = live_server
    body = json.dumps({"model": model, "prompt": "a" * 5_000_000}).encode()
    data = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    sent = {**headers, "Transfer-Encoding": "chunked"} if chunked else headers
    request = urllib.request.Request(f"{base}/v1/completions", data=data, headers=sent)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert caught.value.code == 413
    error = json.loads(caught.value.read())["error"]
    assert error["code"] == "request_too_large" and "20000 bytes" in error["message"]
    small = json.dumps({"model": model, "prompt": "a", "max_tokens": 3}).encode()
    request = urllib.request.Request(f"{base}/v1/completions", data=small, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
        assert len(json.loads(answer.read())["choices"][0]["text"]) == 3


@pytest.mark.parametrize("body", ['{"model": ', "[1, 2]", '{"model": "m", "prompt": [1, 2]}'])
def test_malformed_bodies_are_400_in_openai_shape(live_server, body):
    base, _ = live_server
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    answer = httpx.post(f"{base}/v1/completions", content=body, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if body.startswith('{"model": ') and "prompt" not in body:
        assert "not valid JSON" in error["message"] and error["param"] is None


def test_full_server_is_429_with_retry_after(client, model):
    hog = client.completions.create(
        model=model, prompt="a", max_tokens=10**6, n=40, stream=True, seed=1
    )
    try:
        next(iter(hog))
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model=model, prompt="a", max_tokens=5, n=10)
        assert caught.value.response.headers["retry-after"] == "1"
    finally:
        hog.close()
    # The hog's rows are freed: a request that did not fit now does.
    deadline = time.monotonic() + 10
    while True:
        try:
            client.completions.create(model=model, prompt="a", max_tokens=5, n=10)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_32_concurrent_requests_equal_their_solo_answers(client, model, trained_run):
    sampler = Sampler.from_checkpoint(trained_run)
    settings = [dict(temperature=t, top_p=p) for t in (0.0, 0.5, 1.0, 1.5) for p in (0.5, 1.0)]
    requests = [
        dict(prompt=["", "The ", "dog"][i % 3], max_tokens=50 + i, seed=i, **settings[i % 8])
        for i in range(32)
    ]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        options = requests[i]
        if i % 2:
            chunks = client.completions.create(model=model, stream=True, **options)
            results[i] = "".join(chunk.choices[0].text for chunk in chunks)
        else:
            results[i] = client.completions.create(model=model, **options).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i, options in enumerate(requests):
        options = dict(options)
        top_p = options.pop("top_p")
        solo = sampler.generate(
            options.pop("max_tokens"), prime=options.pop("prompt"), top_p=top_p, **options
        )
        assert results[i] == solo, f"request {i}"


def _streams(base: str) -> int:
    return httpx.get(f"{base}/health", timeout=TIMEOUT).json()["streams"]


def test_disconnect_frees_rows(live_server, model):
    base, _ = live_server
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": model, "prompt": "a", "max_tokens": 10**6, "stream": True}
    url = f"{base}/v1/completions"
    with (
        httpx.Client(timeout=TIMEOUT, headers=headers) as http,
        http.stream("POST", url, json={**body, "n": 3}) as kept,
    ):
        kept_lines = kept.iter_lines()  # one iterator: dropping it would close the stream
        assert next(kept_lines).startswith("data: ")
        with http.stream("POST", url, json={**body, "n": 2}) as gone:
            gone_lines = gone.iter_lines()
            assert next(gone_lines).startswith("data: ")
            assert _streams(base)[model] == 5
        deadline = time.monotonic() + 10
        while _streams(base)[model] != 3:
            assert time.monotonic() < deadline, "the closed stream kept its rows"
            time.sleep(0.05)
        assert next(kept_lines) is not None  # the other stream goes on
    deadline = time.monotonic() + 10
    while _streams(base)[model] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _signal_mid_stream(base: str, model: str, send_signal) -> list[str]:
    """Start a long streamed completion, call ``send_signal`` once its first line is in, and
    return the lines that follow."""
    body = {"model": model, "prompt": "a", "max_tokens": 4096, "stream": True}
    with (
        httpx.Client(timeout=TIMEOUT) as http,
        http.stream("POST", f"{base}/v1/completions", json=body) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        send_signal()
        return [line for line in lines if line]


def test_sigterm_ends_streams_and_exits_0(trained_run):
    proc, base = start_server(trained_run, api_key=None)
    try:
        rest = _signal_mid_stream(base, trained_run.name, proc.terminate)
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=15) == 0
    finally:
        stop_server(proc)


def test_blas_threads_follow_the_idle_cores_unless_chosen(live_server, trained_run):
    base, _ = live_server  # started with OPENBLAS_NUM_THREADS=1: the user's choice is kept
    assert httpx.get(f"{base}/health", timeout=TIMEOUT).json()["blas_threads"] is None
    proc, base = start_server(trained_run, api_key=None, blas_threads=None)
    try:
        threads = httpx.get(f"{base}/health", timeout=TIMEOUT).json()["blas_threads"]
        assert isinstance(threads, int) and 1 <= threads <= 4
    finally:
        stop_server(proc)


def test_serve_refuses_a_missing_run_in_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "textgen", "serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    missing = tmp_path / "nope"
    assert done.stderr.strip().splitlines() == [f"Error: no such run directory: {missing}"]


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _engine_pid(server_pid: int) -> int:
    """The pid of a server's (one) engine process, from Linux's /proc."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    engines = [
        int(pid) for pid in children
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]  # fmt: skip
    assert len(engines) == 1, children
    return engines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_group_stops_the_server_and_its_engine_quietly(trained_run, signum):
    # A terminal's Ctrl-C and a service manager's stop signal every process of the group.
    proc, base = start_server(trained_run, api_key=None, start_new_session=True)
    try:
        engine = _engine_pid(proc.pid)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        rest = _signal_mid_stream(base, trained_run.name, lambda: os.killpg(proc.pid, signum))
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=15) == 0
        log = proc.stdout.read()
        assert "Traceback" not in log and "KeyboardInterrupt" not in log
        assert "exit code" not in log  # the engine outlived the signal and was closed
        deadline = time.monotonic() + 10
        while any(_alive(int(pid)) for pid in children) or _alive(engine):
            assert time.monotonic() < deadline, "a child of the server outlived it"
            time.sleep(0.05)
    finally:
        stop_server(proc)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_a_dead_engine_turns_the_server_unhealthy_and_its_answers_503(trained_run):
    proc, base = start_server(trained_run, api_key=None)
    try:
        os.kill(_engine_pid(proc.pid), signal.SIGKILL)  # as the out-of-memory killer would
        deadline = time.monotonic() + 10
        while (health := httpx.get(f"{base}/health", timeout=TIMEOUT)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health.status_code == 503
        assert "engine process stopped (exit code -9)" in health.json()["status"]
        body = {"model": trained_run.name, "prompt": "a", "max_tokens": 5}
        answer = httpx.post(f"{base}/v1/completions", json=body, timeout=TIMEOUT)
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "engine_stopped"
    finally:
        stop_server(proc)
