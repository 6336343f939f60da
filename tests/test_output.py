import io
import json
import time

import pytest

from textgen import sinks
from textgen.sample import output
from textgen.sample.sampler import Sampler


class RecordingBytes(io.BytesIO):
    """Remembers what had been written each time it was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[bytes] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


class RecordingStdout:
    def __init__(self) -> None:
        self.buffer = RecordingBytes()

    def flush(self) -> None:
        pass


def test_a_single_sample_streams_but_is_not_flushed_per_character(monkeypatch):
    stdout = RecordingStdout()
    monkeypatch.setattr(sinks.sys, "stdout", stdout)

    def pieces():
        for _ in range(2000):  # far faster than the flush interval
            yield ["a"]
        time.sleep(output.LIVE_FLUSH_SECONDS * 2)
        yield ["b"]  # the pause is over: this one goes out at once
        yield ["c"]

    output.write_samples(lambda first, count: pieces(), 1, prime="> ")
    flushed = stdout.buffer.flushed
    assert stdout.buffer.getvalue() == ("> " + "a" * 2000 + "bc\n").encode()
    assert flushed[0] == b"> "  # the prime shows before generation starts
    assert any(f.endswith(b"a" * 2000 + b"b") for f in flushed)
    assert len(flushed) < 10


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
@pytest.mark.parametrize("stop", [(), ("e",)])
def test_chunks_of_streams_write_what_one_batch_would(tmp_path, trained_run, fmt, stop):
    sampler = Sampler.from_checkpoint(trained_run)

    def stream(first, count):
        return sampler.stream_batch(
            count, 25, prime="Th", seed=8, stop=stop, first_sample=first, temperature=1.5
        )

    written = {}
    for chunk in (7, 3, 1):  # one batch; chunks of 3, 3 and 1; one stream at a time
        path = tmp_path / f"chunk{chunk}.{fmt}"
        output.write_samples(stream, 7, prime="Th", fmt=fmt, output=str(path), chunk=chunk)
        written[chunk] = path.read_text(encoding="utf-8")
    assert written[3] == written[7] == written[1]

    texts = sampler.generate_batch(7, 25, prime="Th", seed=8, stop=stop, temperature=1.5)
    assert len(set(texts)) == 7
    if fmt == "jsonl":
        rows = [json.loads(line) for line in written[3].splitlines()]
        assert [row["sample"] for row in rows] == list(range(7))
        assert [row["text"] for row in rows] == texts
    else:
        assert written[3] == "".join(
            f"----- sample {i + 1} of 7 -----\nTh{t}\n" for i, t in enumerate(texts)
        )


def test_ctrl_c_keeps_the_chunks_so_far_and_starts_no_more(tmp_path):
    started = []

    def stream(first, count):
        started.append(first)
        yield [f"{first + i}a" for i in range(count)]
        if first == 2:
            raise KeyboardInterrupt
        yield [f"{first + i}b" for i in range(count)]

    path = tmp_path / "out.jsonl"
    output.write_samples(stream, 6, fmt="jsonl", output=str(path), chunk=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["0a0b", "1a1b", "2a", "3a"]
    assert started == [0, 2]
