"""Chat completions through the official openai client, and CORS, against a live server."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import openai
import pytest
from conftest import API_KEY, start_server, stop_server

from textgen.sample.sampler import Sampler

TIMEOUT = 20.0
CONVERSATION = [
    {"role": "system", "content": "A dog naps on warm mats."},
    {"role": "user", "content": "The quick cats"},
]
RENDERED = "A dog naps on warm mats.\n\nThe quick cats\n\n"  # the default template's prompt
# A second server: each message on a line after its role, so that the reply (opened by
# "assistant ") stops at the corpus's frequent newline; pages from ORIGIN may call it.
TEMPLATE = r"{role} {content}\n"
ORIGIN = "http://app.example:8080"


def _client(base: str, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def client(live_server):
    with _client(live_server[0]) as client:
        yield client


@pytest.fixture(scope="module")
def model(live_server):
    return live_server[1]


@pytest.fixture(scope="module")
def dialogue(trained_run):
    """A server with ``--chat-template TEMPLATE --allow-origin ORIGIN``: (base URL, client)."""
    proc, base = start_server(
        trained_run, "--chat-template", TEMPLATE, "--allow-origin", ORIGIN, "--max-tokens", "500"
    )
    try:
        with _client(base) as client:
            yield base, client
    finally:
        stop_server(proc)


def test_a_reply_is_the_completion_of_the_rendered_conversation(client, model, trained_run):
    options = dict(max_tokens=120, seed=5, temperature=0.8)
    chat = client.chat.completions.create(model=model, messages=CONVERSATION, **options)
    plain = client.completions.create(model=model, prompt=RENDERED, stop="\n\n", **options)
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    [choice] = chat.choices
    assert choice.message.role == "assistant" and choice.index == 0
    assert choice.message.content == plain.choices[0].text
    assert choice.finish_reason == plain.choices[0].finish_reason
    want = Sampler.from_checkpoint(trained_run).generate(
        120, prime=RENDERED, seed=5, temperature=0.8, stop=["\n\n"]
    )
    assert choice.message.content == want and len(want) > 0
    assert chat.usage.prompt_tokens == len(RENDERED)
    assert chat.usage.completion_tokens == len(want)


def test_streamed_reply_equals_the_plain_one(client, model):
    options = dict(model=model, messages=CONVERSATION, max_tokens=150, seed=2, n=2)
    plain = client.chat.completions.create(**options)
    chunks = list(
        client.chat.completions.create(
            **options, stream=True, stream_options={"include_usage": True}
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[0].delta.content == ""
        assert "".join(c.delta.content or "" for c in mine) == plain.choices[index].message.content
        assert mine[-1].finish_reason == plain.choices[index].finish_reason == "length"
        assert [c.finish_reason for c in mine[:-1]] == [None] * (len(mine) - 1)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 300
    assert [c.message.content for c in plain.choices] == [
        c.text for c in client.completions.create(
            model=model, prompt=RENDERED, stop="\n\n", max_tokens=150, seed=2, n=2
        ).choices
    ]  # fmt: skip


def test_stop_strings_end_the_reply_beside_the_templates(client, model):
    options = dict(max_tokens=300, seed=4)
    chat = client.chat.completions.create(
        model=model, messages=CONVERSATION, stop=["e", "zz"], **options
    )
    plain = client.completions.create(
        model=model, prompt=RENDERED, stop=["e", "zz", "\n\n"], **options
    )
    content = chat.choices[0].message.content
    assert content == plain.choices[0].text and "e" not in content
    assert chat.choices[0].finish_reason == "stop"
    # Four stop strings of the request's own are allowed; the template's is not counted.
    four = client.chat.completions.create(
        model=model, messages=CONVERSATION, stop=["e", "a", "o", "zz"], **options
    )
    assert four.choices[0].finish_reason == "stop"


def test_the_template_stop_ends_the_reply(dialogue, trained_run):
    _, client = dialogue
    messages = [*CONVERSATION, {"role": "assistant", "content": ""}]
    chat = client.chat.completions.create(
        model=trained_run.name, messages=messages, seed=1, max_tokens=400
    )
    prompt = "system A dog naps on warm mats.\nuser The quick cats\nassistant "
    want = Sampler.from_checkpoint(trained_run).generate(400, prime=prompt, seed=1, stop=["\n"])
    assert chat.choices[0].message.content == want
    assert chat.choices[0].finish_reason == "stop" and "\n" not in want
    assert chat.usage.prompt_tokens == len(prompt)


def test_empty_messages_add_nothing(client, model):
    options = dict(model=model, max_tokens=40, seed=8)
    with_empty = [
        {"role": "user", "content": ""},
        *CONVERSATION,
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": ""}]},
    ]
    same = client.chat.completions.create(messages=with_empty, **options)
    plain = client.chat.completions.create(messages=CONVERSATION, **options)
    assert same.choices[0].message.content == plain.choices[0].message.content
    # Text parts are joined; nothing at all is the reply alone, as an empty prompt.
    parts = [{"type": "text", "text": "The quick"}, {"type": "text", "text": " cats"}]
    joined = client.chat.completions.create(
        messages=[CONVERSATION[0], {"role": "user", "content": parts}], **options
    )
    assert joined.choices[0].message.content == plain.choices[0].message.content
    nothing = client.chat.completions.create(messages=[{"role": "user", "content": ""}], **options)
    empty = client.completions.create(prompt="", stop="\n\n", **options)
    assert nothing.choices[0].message.content == empty.choices[0].text
    assert nothing.usage.prompt_tokens == 0


def test_logprobs_in_the_chat_shape(client, model):
    chat = client.chat.completions.create(
        model=model, messages=CONVERSATION, max_tokens=12, seed=3, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content) == chat.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)
    plain = client.chat.completions.create(  # top_logprobs counts only with logprobs
        model=model, messages=CONVERSATION, max_tokens=12, seed=3, top_logprobs=2
    )
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == chat.choices[0].message.content


@pytest.mark.parametrize(
    "options, param",
    [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "robot", "content": "a"}]), "messages"),
        (dict(messages=[{"content": "a"}]), "messages"),
        (dict(messages=[{"role": "user", "content": "snow \u2603"}]), "messages"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages"),
        (dict(max_tokens=10**9), "max_tokens"),
        (dict(max_completion_tokens=-1), "max_completion_tokens"),
        (dict(temperature=5.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(n=0), "n"),
        (dict(seed=-3), "seed"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(stop=["", "b"]), "stop"),
        (dict(logprobs=True, top_logprobs=9), "top_logprobs"),
        (dict(extra_body={"top_k": 0}), "top_k"),
    ],
)
def test_bad_values_are_400(client, model, options, param):
    options = {"messages": CONVERSATION, "max_tokens": 5, **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, **options)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "invalid_request_error"
    assert caught.value.body["param"] == param and caught.value.body["message"]


def test_unknown_model_404_wrong_key_401_full_429(live_server, client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-run", messages=CONVERSATION)
    with _client(live_server[0], "wrong") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=model, messages=CONVERSATION)
    answer = httpx.post(
        f"{live_server[0]}/v1/chat/completions", json={"model": model, "messages": CONVERSATION}
    )
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    hog = client.chat.completions.create(
        model=model, messages=CONVERSATION, max_tokens=10**6, n=40, stream=True, seed=1
    )
    try:
        next(iter(hog))
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=model, messages=CONVERSATION, n=10)
        assert caught.value.response.headers["retry-after"] == "1"
    finally:
        hog.close()


def test_chat_and_completions_share_the_batch(client, model, trained_run):
    # Requests of both kinds at once, each equal to its answer alone.
    sampler = Sampler.from_checkpoint(trained_run)
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        options = dict(model=model, max_tokens=60 + i, seed=i, temperature=0.9)
        if i % 2:
            answer = client.chat.completions.create(messages=CONVERSATION, stop="zz", **options)
            results[i] = answer.choices[0].message.content
        else:
            results[i] = client.completions.create(prompt="The ", **options).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i in range(12):
        prompt, stop = (RENDERED, ["zz", "\n\n"]) if i % 2 else ("The ", [])
        alone = sampler.generate(60 + i, prime=prompt, seed=i, temperature=0.9, stop=stop)
        assert results[i] == alone, f"request {i}"


def test_no_cors_headers_unless_an_origin_is_allowed(live_server, dialogue):
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    url = "/v1/chat/completions"
    default = httpx.options(live_server[0] + url, headers=preflight, timeout=TIMEOUT)
    assert not any(h.startswith("access-control-") for h in default.headers)
    base, _ = dialogue
    allowed = httpx.options(base + url, headers=preflight, timeout=TIMEOUT)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        base + url, headers={**preflight, "Origin": "http://evil.example"}, timeout=TIMEOUT
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # The request itself, and its errors, carry the header for the allowed origin only.
    body = {"model": "x", "messages": CONVERSATION}
    for origin, key, status in [(ORIGIN, API_KEY, 404), (ORIGIN, "wrong", 401)]:
        headers = {"Origin": origin, "Authorization": f"Bearer {key}"}
        answer = httpx.post(base + url, json=body, headers=headers, timeout=TIMEOUT)
        assert answer.status_code == status
        assert answer.headers["access-control-allow-origin"] == ORIGIN
    headers = {"Origin": "http://evil.example", "Authorization": f"Bearer {API_KEY}"}
    answer = httpx.post(base + url, json=body, headers=headers, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--allow-origin", "http://app.example/"], "--allow-origin takes an origin"),
        (["--chat-template", "{speaker}: {content}"], "names {speaker}"),
        (["--chat-template", "no content"], "{content} once"),
    ],
)
def test_bad_serve_options_fail_in_one_line(trained_run, args, fragment):
    done = subprocess.run(
        [sys.executable, "-m", "textgen", "serve", str(trained_run), "--port", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]
