"""Corpora by name: built-ins, verified downloads from a local server, statistics and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen.cli.corpus import corpus
from textgen.corpus import catalogue as corpora
from textgen.corpus import corpus_info
from textgen.errors import CorpusError

REPO = Path(__file__).resolve().parents[1]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
SERVER_LIFETIME_SECONDS = 60


# --- a local HTTP server -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes``: path -> (body, declared Content-Length or None for the truth)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, declared = route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server:
    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self.httpd = httpd

    def serve(self, path: str, body: bytes, *, declared: int | None = None) -> str:
        self.httpd.routes[path] = (body, declared)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    # Stops itself even if a test hangs, so the run can never block on it.
    watchdog = threading.Timer(SERVER_LIFETIME_SECONDS, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield Server(httpd)
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "corpora"
    monkeypatch.setenv(corpora.ENV_DIR, str(folder))
    for name in os.environ:
        if name.startswith(corpora.ENV_URL_PREFIX):
            monkeypatch.delenv(name)
    return folder


@pytest.fixture
def catalogue(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """A fake catalogue the tests fill in; the real one is left alone."""
    entries: dict[str, dict] = {}
    monkeypatch.setattr(corpora, "load_catalogue", lambda: entries)
    return entries


def entry(url: str, fmt: str = "text", **fields: object) -> dict:
    base = {"description": "test text", "url": url, "format": fmt, "licence": "test"}
    return {"size": None, "sha256": None, "text_size": None, **base, **fields}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zipped(*members: tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members:
            bundle.writestr(name, data)
    return buffer.getvalue()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- downloads -----------------------------------------------------------------------------------


def test_good_download_is_verified_and_saved(cdir, catalogue, server):
    body = TEXT.encode()
    url = server.serve("/good.txt", body)
    catalogue["good"] = entry(url, size=len(body), sha256=sha256(body), text_size=len(body))

    path = corpora.get_corpus("good", progress=False)

    assert path == cdir / "good.txt"
    assert path.read_bytes() == body
    assert files_in(cdir) == ["good.txt"]  # no temporaries, no hash record (catalogue has one)
    assert corpora.get_corpus("good", progress=False) == path  # cached: no second download


def test_wrong_hash_saves_nothing(cdir, catalogue, server):
    url = server.serve("/bad.txt", b"corrupted")
    catalogue["bad"] = entry(url, sha256=sha256(b"original"))

    with pytest.raises(CorpusError) as caught:
        corpora.get_corpus("bad", progress=False)

    message = str(caught.value)
    assert f"has SHA-256 {sha256(b'corrupted')}, expected {sha256(b'original')}" in message
    assert "nothing was saved" in message
    assert f"download {url}" in message and str((cdir / "bad.txt").absolute()) in message
    assert "\n" not in message
    assert files_in(cdir) == []


def test_wrong_size_saves_nothing(cdir, catalogue, server):
    url = server.serve("/short.txt", b"x" * 10)
    catalogue["short"] = entry(url, size=20)

    with pytest.raises(CorpusError, match=r"is 10 bytes, expected 20 \(truncated or changed\)"):
        corpora.get_corpus("short", progress=False)
    assert files_in(cdir) == []


def test_connection_cut_short_saves_nothing(cdir, catalogue, server):
    url = server.serve("/cut.txt", b"y" * 100, declared=1000)
    catalogue["cut"] = entry(url)

    with pytest.raises(CorpusError, match=r"closed after 100 of 1,000 bytes"):
        corpora.get_corpus("cut", progress=False)
    assert files_in(cdir) == []


def test_http_404_names_url_and_destination(cdir, catalogue, server):
    url = server.url("/missing.txt")
    catalogue["missing"] = entry(url)

    with pytest.raises(CorpusError) as caught:
        corpora.get_corpus("missing", progress=False)

    message = str(caught.value)
    assert f"{url} answered HTTP 404" in message
    assert f"save the text as {(cdir / 'missing.txt').absolute()}" in message
    assert files_in(cdir) == []


def test_unreachable_host_says_how_to_fetch_by_hand(cdir, catalogue):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/archive.zip"
    catalogue["offline"] = entry(url, "zip")

    with pytest.raises(CorpusError) as caught:
        corpora.get_corpus("offline", progress=False)

    message = str(caught.value)
    assert message.startswith(f"cannot download offline from {url} (")
    assert f"download {url}, unzip it and save the text as {(cdir / 'offline.txt').absolute()}" in (
        message
    )
    assert files_in(cdir) == []


def test_zip_is_unpacked_and_unknown_hash_recorded(cdir, catalogue, server, capsys):
    archive = zipped(("inner", TEXT.encode()))
    url = server.serve("/text.zip", archive)
    catalogue["zipped"] = entry(url, "zip", size=len(archive), text_size=len(TEXT))

    path = corpora.get_corpus("zipped", progress=True)

    assert path.read_text() == TEXT
    assert files_in(cdir) == ["zipped.sha256", "zipped.txt"]
    assert (cdir / "zipped.sha256").read_text() == f"{sha256(archive)}  text.zip\n"
    assert corpora.recorded_sha256("zipped") == sha256(archive)
    assert f"SHA-256 of the download is {sha256(archive)}" in capsys.readouterr().err


def test_recorded_hash_guards_later_downloads(cdir, catalogue, server):
    url = server.serve("/book.txt", b"first edition")
    catalogue["book"] = entry(url)
    corpora.get_corpus("book", progress=False)
    (cdir / "book.txt").unlink()
    server.serve("/book.txt", b"second edition")

    with pytest.raises(CorpusError, match=r"book\.sha256 \(delete it if the file changed"):
        corpora.get_corpus("book", progress=False)
    assert files_in(cdir) == ["book.sha256"]

    (cdir / "book.sha256").unlink()
    assert corpora.get_corpus("book", progress=False).read_bytes() == b"second edition"


def test_zip_with_several_files_is_refused(cdir, catalogue, server):
    url = server.serve("/two.zip", zipped(("a", b"a"), ("b", b"b")))
    catalogue["two"] = entry(url, "zip")

    with pytest.raises(CorpusError, match="archive holds 2 files, expected one"):
        corpora.get_corpus("two", progress=False)
    assert files_in(cdir) == []


def test_damaged_zip_is_refused(cdir, catalogue, server):
    url = server.serve("/broken.zip", b"PK not really a zip")
    catalogue["broken"] = entry(url, "zip")

    with pytest.raises(CorpusError, match="archive is damaged"):
        corpora.get_corpus("broken", progress=False)
    assert files_in(cdir) == []


def test_unpacked_size_is_checked(cdir, catalogue, server):
    url = server.serve("/text.zip", zipped(("inner", b"12345")))
    catalogue["sized"] = entry(url, "zip", text_size=6)

    with pytest.raises(CorpusError, match="text is 5 bytes, expected 6"):
        corpora.get_corpus("sized", progress=False)
    assert files_in(cdir) == []


def test_gzip_is_unpacked(cdir, catalogue, server):
    url = server.serve("/text.gz", gzip.compress(TEXT.encode()))
    catalogue["gz"] = entry(url, "gzip")

    assert corpora.get_corpus("gz", progress=False).read_text() == TEXT


def test_interrupted_download_leaves_nothing(cdir, catalogue, server, monkeypatch):
    class Interrupting:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(corpora, "_progress_bar", lambda *a, **k: Interrupting())
    catalogue["big"] = entry(server.serve("/big.txt", b"z" * 100_000))

    with pytest.raises(KeyboardInterrupt):
        corpora.get_corpus("big", progress=False)
    assert files_in(cdir) == []


def test_url_override_by_environment_and_argument(cdir, server, monkeypatch):
    # The real catalogue entry keeps its size and hash, so a local stand-in must fail them.
    env_url = server.serve("/env.txt", b"not shakespeare")
    monkeypatch.setenv("TEXTGEN_CORPUS_URL_TINYSHAKESPEARE", env_url)
    with pytest.raises(CorpusError, match=rf"from {re.escape(env_url)} is 15 bytes, expected"):
        corpora.get_corpus("tinyshakespeare", progress=False)

    arg_url = server.serve("/arg.txt", b"nor this")
    with pytest.raises(CorpusError, match=rf"from {re.escape(arg_url)} is 8 bytes"):
        corpora.get_corpus("tinyshakespeare", progress=False, url=arg_url)
    assert files_in(cdir) == []


def test_file_url_mirror(cdir, catalogue, tmp_path):
    source = tmp_path / "copy.txt"
    source.write_text(TEXT)
    catalogue["local"] = entry(
        "http://example.invalid/never-used.txt", sha256=sha256(TEXT.encode())
    )

    path = corpora.get_corpus("local", progress=False, url=source.as_uri())
    assert path.read_text() == TEXT


def test_get_unknown_name(cdir):
    with pytest.raises(CorpusError, match=r"'nope' is not a corpus that can be fetched; known"):
        corpora.get_corpus("nope", progress=False)


# --- resolving names -----------------------------------------------------------------------------


def test_corpus_dir_default_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(corpora.ENV_DIR, raising=False)
    assert corpora.corpus_dir() == Path("corpora")
    monkeypatch.setenv(corpora.ENV_DIR, str(tmp_path))
    assert corpora.corpus_dir() == tmp_path


def test_existing_path_is_returned_unchanged(cdir, tmp_path):
    text = tmp_path / "pydocs"  # a file wins over a built-in of the same name
    text.write_text("mine")
    assert corpora.resolve_corpus(str(text)) == text
    assert not cdir.exists()


def test_local_file_found_by_name(cdir):
    cdir.mkdir()
    (cdir / "mine.txt").write_text("hello")
    assert corpora.resolve_corpus("mine") == cdir / "mine.txt"
    assert corpora.resolve_corpus("mine.txt") == cdir / "mine.txt"


def test_unknown_spec_lists_known_names(cdir):
    with pytest.raises(CorpusError) as caught:
        corpora.resolve_corpus("no/such/file.txt")
    message = str(caught.value)
    assert message.startswith("no such file or known corpus: no/such/file.txt")
    assert "pydocs, pysource, tinyshakespeare" in message


def test_directory_is_refused(cdir, tmp_path):
    with pytest.raises(CorpusError, match="is a directory"):
        corpora.resolve_corpus(str(tmp_path))


def test_catalogue_name_without_download(cdir):
    with pytest.raises(CorpusError, match=r"not downloaded yet; run `textgen corpus get text8`"):
        corpora.resolve_corpus("text8", download=False)


def test_catalogue_name_downloads_when_allowed(cdir, catalogue, server):
    catalogue["remote"] = entry(server.serve("/remote.txt", b"remote text"))
    assert corpora.resolve_corpus("remote", progress=False).read_bytes() == b"remote text"


# --- built-ins -----------------------------------------------------------------------------------


def test_pydocs_is_generated_once(cdir):
    from pydoc_data.topics import topics

    path = corpora.resolve_corpus("pydocs", progress=False)

    text = path.read_text(encoding="utf-8")
    assert path == cdir / "pydocs.txt"
    assert len(text) > 400_000
    assert text == "\n\n".join(topics[key] for key in sorted(topics))
    stamp = path.stat().st_mtime_ns
    assert corpora.resolve_corpus("pydocs") == path
    assert path.stat().st_mtime_ns == stamp
    assert files_in(cdir) == ["pydocs.txt"]


def test_pysource_from_the_standard_library(cdir):
    path = corpora.get_corpus("pysource", progress=False)  # about 12 MB, well under a second

    text = path.read_text(encoding="utf-8")
    headers = re.findall(r"^# ==== (.+) ====$", text, flags=re.MULTILINE)
    assert len(text) > 5_000_000
    assert "os.py" in headers and "json/decoder.py" in headers
    assert headers == sorted(headers)
    assert not [h for h in headers if re.search(r"(^|/)(test|tests|site-packages)/", h)]
    assert files_in(cdir) == ["pysource.txt"]


def test_source_listing_skips_tests_and_third_party(tmp_path):
    for rel in [
        "b.py",
        "a/z.py",
        "a/readme.txt",
        "a.py",
        "test/test_x.py",
        "pkg/tests/t.py",
        "site-packages/lib.py",
        "__pycache__/c.py",
        "idlelib/idle_test/t.py",
        "idlelib/run.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("pass\n")

    found = [p.relative_to(tmp_path).as_posix() for p in corpora.python_source_files(tmp_path)]
    assert found == ["a.py", "a/z.py", "b.py", "idlelib/run.py"]


def test_pysource_replaces_bad_bytes_and_separates_files(tmp_path):
    (tmp_path / "good.py").write_text("x = 1")
    (tmp_path / "odd.py").write_bytes(b"s = '\xff'\r\n")
    dest = tmp_path / "out.txt"

    with open(dest, "w", encoding="utf-8", newline="\n") as out:
        written = corpora.write_pysource(out, root=tmp_path)

    text = dest.read_text(encoding="utf-8")
    assert text == "# ==== good.py ====\nx = 1\n\n# ==== odd.py ====\ns = '\ufffd'\n\n"
    assert written == len(text)


# --- listing and statistics ----------------------------------------------------------------------


def test_list_corpora(cdir):
    cdir.mkdir()
    (cdir / "mine.txt").write_text("abc")
    (cdir / ".mine.txt.0123abcd.part").write_text("in progress")
    (cdir / "text8.txt").write_text("already here")

    rows = {row["name"]: row for row in corpora.list_corpora()}

    assert list(rows)[:2] == ["pydocs", "pysource"]
    assert {"tinyshakespeare", "nietzsche", "text8", "enwik8", "mine"} <= set(rows)
    assert all(not name.startswith(".") for name in rows)
    assert rows["mine"]["kind"] == "local" and rows["mine"]["available"]
    assert rows["mine"]["size"] == 3
    assert rows["text8"]["available"] and rows["text8"]["size"] == len("already here")
    assert not rows["enwik8"]["available"] and rows["enwik8"]["size"] == 100_000_000
    assert rows["tinyshakespeare"]["kind"] == "catalogue"
    assert not rows["pydocs"]["available"]


def test_info_counts_characters(tmp_path):
    text = "héllo wörld\n" * 3 + "\u2028z"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")

    info = corpus_info(path, top=3)

    counts = Counter(text)
    assert info["size_bytes"] == len(text.encode())
    assert info["characters"] == len(text)
    assert info["distinct"] == len(counts)
    assert info["valid_utf8"] and info["invalid_offset"] is None and info["encoding"] == "UTF-8"
    assert info["most_common"] == [("l", 9), ("\n", 3), (" ", 3)]  # ties: lower code point first
    assert info["least_common"] == [("z", 1), ("\u2028", 1), ("\n", 3)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_info_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(corpora, "CHUNK_SIZE", chunk)  # reads are 4 * CHUNK_SIZE bytes
    good = "aé€😀b".encode() * 5
    data = good + b"\xe2\x82" + good + b"\xff"
    path = tmp_path / "bad.txt"
    path.write_bytes(data)

    info = corpus_info(path)

    expected = Counter(data.decode("utf-8", errors="replace"))
    assert info["invalid_offset"] == len(good)
    assert info["encoding"] == f"not valid UTF-8 (first bad byte at offset {len(good)})"
    assert info["characters"] == sum(expected.values())
    assert dict(info["most_common"]) == {c: n for c, n in expected.items()}


def test_info_truncated_sequence_at_end(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes(b"abc\xe2\x82")
    info = corpus_info(path)
    assert info["invalid_offset"] == 3
    assert not info["valid_utf8"]


def test_info_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    info = corpus_info(path)
    assert (info["characters"], info["distinct"], info["most_common"]) == (0, 0, [])


# --- command line --------------------------------------------------------------------------------


def test_cli_list(cdir):
    result = CliRunner().invoke(corpus, ["list"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^tinyshakespeare\s+catalogue\s+-\s+1\.1 MB", result.output, re.MULTILINE)
    assert f"Corpus directory: {cdir.absolute()}" in result.output


def test_cli_info_shows_whitespace(cdir):
    cdir.mkdir()
    (cdir / "small.txt").write_text("aa b\n\tc\n", encoding="utf-8")

    result = CliRunner().invoke(corpus, ["info", "small", "--top", "3"])

    assert result.exit_code == 0, result.output
    assert "Encoding:    UTF-8" in result.output
    assert "Characters:  8" in result.output
    assert "Distinct:    6" in result.output
    assert re.search(r"^  'a'\s+2\s+25\.000%$", result.output, re.MULTILINE)
    assert re.search(r"^  '\\n' U\+000A\s+2", result.output, re.MULTILINE)
    assert re.search(r"^  '\\t' U\+0009\s+1", result.output, re.MULTILINE)


def test_cli_info_reads_a_folder_as_training_does(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("ab", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("c", encoding="utf-8")

    result = CliRunner().invoke(corpus, ["info", str(folder)])

    assert result.exit_code == 0, result.output
    assert f"Files:       2 in {folder}" in result.output
    # The files joined by a blank line, as training reads them.
    assert "Characters:  5" in result.output
    assert re.search(r"^  '\\n' U\+000A\s+2", result.output, re.MULTILINE)


def test_cli_get_prints_path(cdir, catalogue, server):
    catalogue["remote"] = entry(server.serve("/r.txt", b"text"))
    result = CliRunner().invoke(corpus, ["get", "remote", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cdir / "remote.txt")


def test_cli_errors_are_one_line(cdir, catalogue, server):
    catalogue["gone"] = entry(server.url("/gone.txt"))
    result = CliRunner().invoke(corpus, ["get", "gone", "-q"])

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot download gone:")

    result = CliRunner().invoke(corpus, ["info", "no-such-corpus"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no such file or known corpus: no-such-corpus")


# --- package data --------------------------------------------------------------------------------


def test_catalogue_entries_are_well_formed():
    data = json.loads(corpora.CATALOGUE_PATH.read_text(encoding="utf-8"))
    entries = data["corpora"]
    assert {"tinyshakespeare", "nietzsche", "text8", "enwik8"} <= set(entries)
    readme = (REPO / "corpora" / "README.md").read_text(encoding="utf-8")
    for name, item in entries.items():
        assert set(item) == {
            "description",
            "url",
            "format",
            "licence",
            "size",
            "sha256",
            "text_size",
        }, name
        assert item["format"] in corpora.ARCHIVE_FORMATS
        assert item["url"].startswith(("http://", "https://"))
        assert item["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", item["sha256"])
        for field in ("size", "text_size"):
            assert item[field] is None or (isinstance(item[field], int) and item[field] > 0)
        assert f"| `{name}` |" in readme
        if item["sha256"]:
            assert item["sha256"] in readme


def test_modules_do_not_import_tensorflow():
    code = (
        "import sys, textgen.corpus, textgen.cli.corpus; "
        "sys.exit(', '.join(m for m in ('tensorflow', 'keras') if m in sys.modules) or None)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
