import io
import time

from textgen import output


class RecordingStdout(io.StringIO):
    """Remembers what had been written each time it was flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_a_single_sample_streams_but_is_not_flushed_per_character(monkeypatch):
    stdout = RecordingStdout()
    monkeypatch.setattr(output.sys, "stdout", stdout)

    def pieces():
        for _ in range(2000):  # far faster than the flush interval
            yield ["a"]
        time.sleep(output.LIVE_FLUSH_SECONDS * 2)
        yield ["b"]  # the pause is over: this one goes out at once
        yield ["c"]

    texts = output.write_samples(pieces(), 1, prime="> ")
    assert texts == ["a" * 2000 + "bc"]
    assert stdout.getvalue() == "> " + texts[0] + "\n"
    assert stdout.flushed[0] == "> "  # the prime shows before generation starts
    assert any(f.endswith("a" * 2000 + "b") for f in stdout.flushed)
    assert len(stdout.flushed) < 10
