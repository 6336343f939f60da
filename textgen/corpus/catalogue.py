"""Corpora by name: texts built from this Python, public downloads, and files in the corpus dir.

Every corpus known by name lives as ``corpus_dir()/NAME.txt``:

- built-ins (``pydocs``, ``pysource``) are generated from the running interpreter on first use;
- catalogue entries (``catalogue.json``) are downloaded, verified and unpacked on first use;
- any other ``NAME.txt`` placed in the directory is found by its name.

Nothing appears under a final name until it is complete: files are written under a hidden
``.NAME.txt.XXXXXXXX.part`` name in the same directory and renamed into place at the end.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import secrets
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from textgen.corpus.reading import DOCUMENT_SEPARATOR
from textgen.errors import CorpusError, StorageError
from textgen.files import atomic_write, write_text

ENV_DIR = "TEXTGEN_CORPUS_DIR"
ENV_URL_PREFIX = "TEXTGEN_CORPUS_URL_"
DEFAULT_DIR = "corpora"
CATALOGUE_PATH = Path(__file__).with_name("catalogue.json")
ARCHIVE_FORMATS = ("text", "zip", "gzip")

BUILTINS: dict[str, str] = {
    "pydocs": "Python's documentation topics, the text behind help(); about 465,000 characters",
    "pysource": "The standard library's own .py files, test suites left out; about 12 MB",
}
BUILTIN_LICENCE = "PSF License (ships with Python)"

# Test suites are left out: distributions often ship them separately (so the corpus would differ
# between machines), and their deliberately odd fixtures nearly double the alphabet.
SOURCE_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)
SOURCE_HEADER = "# ==== {path} ====\n"

TIMEOUT_SECONDS = 30
CHUNK_SIZE = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def corpus_dir() -> Path:
    """Where named corpora live: ``$TEXTGEN_CORPUS_DIR`` if set, else ``./corpora``."""
    value = os.environ.get(ENV_DIR)
    return Path(value).expanduser() if value else Path(DEFAULT_DIR)


def load_catalogue() -> dict[str, dict[str, Any]]:
    """Read the catalogue of downloadable corpora that ships with the package.

    Returns:
        Entry per name with ``description``, ``url``, ``format`` (text, zip or gzip),
        ``licence``, ``size`` and ``sha256`` of the download, and ``text_size`` of the text;
        unknown numbers are ``None``.
    """
    try:
        return json.loads(CATALOGUE_PATH.read_text(encoding="utf-8"))["corpora"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorpusError(
            f"the corpus catalogue {CATALOGUE_PATH} is unreadable ({err}); reinstall textgen"
        ) from err


def known_names() -> list[str]:
    """Names resolvable right now: built-ins, catalogue entries, then local files."""
    return [entry["name"] for entry in list_corpora()]


def list_corpora() -> list[dict[str, Any]]:
    """Every corpus known by name, and whether it is on disk yet.

    Returns:
        One dict per corpus with ``name``, ``kind`` (builtin, catalogue or local),
        ``description``, ``licence``, ``path``, ``available`` and ``size`` (bytes on disk when
        available, else the expected text size if known).
    """
    catalogue = load_catalogue()
    rows = [_row(name, "builtin", text, BUILTIN_LICENCE, None) for name, text in BUILTINS.items()]
    rows += [
        _row(name, "catalogue", entry["description"], entry["licence"], entry.get("text_size"))
        for name, entry in catalogue.items()
    ]
    folder = corpus_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.txt")):
            name = path.stem
            if name.startswith(".") or name in BUILTINS or name in catalogue:
                continue
            rows.append(_row(name, "local", "your own text", None, None))
    return rows


def _row(name: str, kind: str, description: str, licence: str | None, size: int | None) -> dict:
    path = _text_path(name)
    available = path.is_file()
    return {
        "name": name,
        "kind": kind,
        "description": description,
        "licence": licence,
        "path": str(path),
        "available": available,
        "size": path.stat().st_size if available else size,
    }


def resolve_corpus(spec: str, *, download: bool = True, progress: bool = True) -> Path:
    """Turn a path or a corpus name into the path of a text file, fetching it if needed.

    Args:
        spec: A file path, a built-in or catalogue name, or ``NAME``/``NAME.txt`` in the corpus dir.
        download: Whether a missing catalogue corpus may be downloaded.
        progress: Whether to show progress bars and notes on stderr.

    Returns:
        ``spec`` unchanged if it names an existing file, else the corpus file.

    Raises:
        CorpusError: The spec matches nothing, or the corpus cannot be made available.
    """
    if not spec.strip():
        raise CorpusError(f"no corpus given; use a file path or one of: {', '.join(known_names())}")
    given = Path(spec)
    if given.is_file():
        return given
    if spec in BUILTINS:
        return _ensure_builtin(spec, progress=progress)
    catalogue = load_catalogue()
    if spec in catalogue:
        path = _text_path(spec)
        if path.is_file():
            return path
        if not download:
            raise CorpusError(
                f"corpus {spec} is not downloaded yet; run `textgen corpus get {spec}` "
                f"or save the text as {path.absolute()}"
            )
        return get_corpus(spec, progress=progress)
    for candidate in (corpus_dir() / spec, corpus_dir() / f"{spec}.txt"):
        if candidate.is_file():
            return candidate
    if given.is_dir():
        raise CorpusError(f"{spec} is a directory; give a text file or a corpus name")
    raise CorpusError(
        f"no such file or known corpus: {spec} (known corpora: {', '.join(known_names())})"
    )


def get_corpus(name: str, *, progress: bool = True, url: str | None = None) -> Path:
    """Make a built-in or catalogue corpus available locally and return its text file.

    Downloads go to a temporary file beside the final one and are renamed into place only after
    the size and SHA-256 check and unpacking succeed. An entry without a catalogue hash is
    checked against ``NAME.sha256`` in the corpus dir if present, else that file is written.

    Args:
        name: A built-in or catalogue name.
        progress: Whether to show a progress bar and notes on stderr.
        url: Where to download from instead of the catalogue URL (a mirror serving the same
            bytes); else ``$TEXTGEN_CORPUS_URL_<NAME>`` if set, else the catalogue URL.

    Raises:
        CorpusError: Unknown name, or the download failed or did not verify.
    """
    if name in BUILTINS:
        return _ensure_builtin(name, progress=progress)
    catalogue = load_catalogue()
    if name not in catalogue:
        known = ", ".join([*BUILTINS, *catalogue])
        raise CorpusError(f"{name!r} is not a corpus that can be fetched; known corpora: {known}")
    final = _text_path(name)
    if final.is_file():
        return final
    entry = catalogue[name]
    _download(name, entry, source_url(name, entry, url), final, progress=progress)
    return final


def source_url(name: str, entry: dict[str, Any], url: str | None = None) -> str:
    """The URL a catalogue corpus is fetched from: ``url``, else the env override, else its own."""
    variable = ENV_URL_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())
    return url or os.environ.get(variable) or entry["url"]


def recorded_sha256(name: str) -> str | None:
    """The SHA-256 noted after the first download of a corpus the catalogue has no hash for."""
    path = _record_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CorpusError(f"cannot read {path} ({err}); delete it to record a new hash") from err
    digest = text.split()[0].lower() if text.split() else ""
    if not _SHA256_RE.fullmatch(digest):
        raise CorpusError(f"{path} holds no SHA-256 hash; delete it to record a new one")
    return digest


# --- built-ins -----------------------------------------------------------------------------------


def write_pydocs(out: IO[str]) -> int:
    """Write Python's documentation topics to the text file ``out``; returns the characters.

    The topics are joined in sorted-key order with a blank line between them.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise CorpusError(
            "this Python has no pydoc_data documentation topics; use another corpus"
        ) from err
    text = "\n\n".join(topics[key] for key in sorted(topics))
    out.write(text)
    return len(text)


def python_source_files(root: Path | None = None) -> list[Path]:
    """The ``.py`` files under ``root`` (default: the standard library), sorted by relative path.

    Directories named in ``SOURCE_SKIP_DIRS`` are skipped; symlinked directories are not followed.
    """
    root = Path(root) if root is not None else Path(os.__file__).parent
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SOURCE_SKIP_DIRS]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def write_pysource(out: IO[str], *, root: Path | None = None, progress: bool = False) -> int:
    """Concatenate the source files into the text file ``out``; returns the character count.

    Each file is preceded by a ``# ==== relative/path.py ====`` line and followed by a blank line.
    Files are read as UTF-8 with bad bytes replaced by U+FFFD, so one odd file cannot stop the
    build; line endings become ``\\n``. Files are streamed one at a time.
    """
    root = Path(root) if root is not None else Path(os.__file__).parent
    files = python_source_files(root)
    written = 0
    with tqdm(files, desc="pysource", unit="file", file=sys.stderr, disable=not progress) as bar:
        for path in bar:
            with open(path, encoding="utf-8", errors="replace") as source:
                text = source.read()
            if text and not text.endswith("\n"):
                text += "\n"
            chunk = SOURCE_HEADER.format(path=path.relative_to(root).as_posix()) + text + "\n"
            out.write(chunk)
            written += len(chunk)
    return written


_BUILTIN_WRITERS: dict[str, Callable[[IO[str], bool], int]] = {
    "pydocs": lambda out, progress: write_pydocs(out),
    "pysource": lambda out, progress: write_pysource(out, progress=progress),
}


def _as_text(write: Callable[[IO[str]], object]) -> Callable[[IO[bytes]], None]:
    """Adapt a writer of UTF-8 text with ``\\n`` line endings to ``atomic_write``'s binary file."""

    def write_bytes(handle: IO[bytes]) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="\n")
        write(text)
        text.flush()
        text.detach()  # the binary file stays open for atomic_write to finish

    return write_bytes


def _ensure_builtin(name: str, *, progress: bool) -> Path:
    final = _text_path(name)
    if final.is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(final, _as_text(lambda out: _BUILTIN_WRITERS[name](out, progress)))
    except (OSError, StorageError) as err:
        raise CorpusError(
            f"cannot write corpus {name} to {final.absolute()} ({err}); "
            f"set {ENV_DIR} to a writable directory"
        ) from err
    return final


# --- downloads -----------------------------------------------------------------------------------


def _download(name: str, entry: dict[str, Any], url: str, final: Path, *, progress: bool) -> None:
    hint = _manual_hint(entry, url, final)
    expected = entry.get("sha256") or recorded_sha256(name)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CorpusError(f"cannot create {final.parent} ({err}); {hint}") from err
    with _scratch_files(final) as new_part:
        download = new_part()
        size, digest = _fetch(name, url, download, hint, progress=progress)
        _verify(name, entry, url, size, digest, expected, hint)
        atomic_write(final, lambda out: _unpack(name, entry, download, out, hint))
    if not expected:
        _record_sha256(name, digest, url, progress=progress)


def _fetch(name: str, url: str, dest: Path, hint: str, *, progress: bool) -> tuple[int, str]:
    """Stream ``url`` into ``dest``; returns its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": "textgen"})
    try:
        with (
            urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response,
            open(dest, "xb") as out,
        ):
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            with _progress_bar(total, name, enabled=progress) as bar:
                while chunk := response.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        # http.client returns a short body without complaint when the connection drops early.
        if total is not None and size != total:
            raise CorpusError(
                f"cannot download {name} from {url} (connection closed after {size:,} of "
                f"{total:,} bytes); {hint}"
            )
    except urllib.error.HTTPError as err:
        err.close()
        raise CorpusError(
            f"cannot download {name}: {url} answered HTTP {err.code} {err.reason}; {hint}"
        ) from err
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise CorpusError(f"cannot download {name} from {url} ({reason}); {hint}") from err
    return size, digest.hexdigest()


def _progress_bar(total: int | None, label: str, *, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc=label, unit="B", unit_scale=True, file=sys.stderr, disable=not enabled
    )


def _verify(
    name: str,
    entry: dict[str, Any],
    url: str,
    size: int,
    digest: str,
    expected: str | None,
    hint: str,
) -> None:
    want_size = entry.get("size")
    if want_size is not None and size != want_size:
        raise CorpusError(
            f"download of {name} from {url} is {size:,} bytes, expected {want_size:,} "
            f"(truncated or changed); nothing was saved; {hint}"
        )
    if expected and digest != expected:
        if entry.get("sha256"):
            source = "the catalogue"
        else:
            source = f"{_record_path(name)} (delete it if the file changed upstream on purpose)"
        raise CorpusError(
            f"download of {name} from {url} has SHA-256 {digest}, expected {expected} from "
            f"{source}; nothing was saved; {hint}"
        )


def _unpack(name: str, entry: dict[str, Any], download: Path, out: IO[bytes], hint: str) -> None:
    """Write the text of a verified download into ``out``, checking its size."""
    archive_format = entry["format"]
    if archive_format not in ARCHIVE_FORMATS:
        raise CorpusError(
            f"catalogue entry {name} has format {archive_format!r}; "
            f"expected one of {', '.join(ARCHIVE_FORMATS)}"
        )
    try:
        with ExitStack() as stack:
            if archive_format == "zip":
                bundle = stack.enter_context(zipfile.ZipFile(download))
                members = [m for m in bundle.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise CorpusError(
                        f"the {name} archive holds {len(members)} files, expected one; {hint}"
                    )
                source = stack.enter_context(bundle.open(members[0]))
            elif archive_format == "gzip":
                source = stack.enter_context(gzip.open(download))
            else:
                source = stack.enter_context(open(download, "rb"))
            shutil.copyfileobj(source, out, CHUNK_SIZE)
    except (zipfile.BadZipFile, gzip.BadGzipFile, EOFError, zlib.error, NotImplementedError) as err:
        raise CorpusError(f"the downloaded {name} archive is damaged ({err}); {hint}") from err
    want, got = entry.get("text_size"), out.tell()
    if want is not None and got != want:
        raise CorpusError(
            f"the {name} text is {got:,} bytes, expected {want:,}; nothing was saved; {hint}"
        )


def _record_sha256(name: str, digest: str, url: str, *, progress: bool) -> None:
    record = _record_path(name)
    try:
        write_text(record, f"{digest}  {url.rsplit('/', 1)[-1]}\n")
    except StorageError as err:
        _note(f"{name}: SHA-256 of the download is {digest} (not recorded: {err})", progress)
        return
    _note(f"{name}: SHA-256 of the download is {digest} (recorded in {record})", progress)


def _manual_hint(entry: dict[str, Any], url: str, final: Path) -> str:
    unpack = {"zip": ", unzip it", "gzip": ", gunzip it"}.get(entry.get("format", "text"), "")
    return f"to fetch it by hand, download {url}{unpack} and save the text as {final.absolute()}"


def _note(message: str, enabled: bool) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


# --- files ---------------------------------------------------------------------------------------


def _text_path(name: str) -> Path:
    return corpus_dir() / f"{name}.txt"


def _record_path(name: str) -> Path:
    return corpus_dir() / f"{name}.sha256"


@contextmanager
def _scratch_files(final: Path) -> Iterator[Callable[[], Path]]:
    """Hand out hidden temporary paths beside ``final``; any still present on exit are removed.

    Renaming one into place is what keeps it; everything else goes, on success, error or Ctrl-C.
    """
    made: list[Path] = []

    def new_part() -> Path:
        path = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        made.append(path)
        return path

    try:
        yield new_part
    finally:
        for path in made:
            with suppress(OSError):
                path.unlink(missing_ok=True)


# --- statistics ----------------------------------------------------------------------------------


def files_info(files: Sequence[Path], *, top: int = 10, path: str | None = None) -> dict[str, Any]:
    """Size, encoding and character statistics of a corpus's files, read in chunks.

    The files are counted as training reads them: joined by ``DOCUMENT_SEPARATOR``. Use
    ``textgen.corpus.corpus_info`` to describe anything a user names as a corpus.

    Args:
        files: The corpus's files, as ``textgen.corpus.reading.corpus_files`` lists them.
        top: How many of the most and least frequent characters to report.
        path: What to report as the corpus's path; the file's own path for one file.

    Returns:
        ``path``, ``files`` (how many), ``size_bytes``, ``valid_utf8``, ``invalid_offset`` (first
        bad byte, or None), ``encoding`` (a sentence), ``characters``, ``distinct``, and
        ``most_common`` / ``least_common`` as ``(char, count)`` lists. Bad bytes are counted as
        U+FFFD.
    """
    tally = _CharTally()
    size = 0
    for n, file in enumerate(files):
        if n:
            tally.add(DOCUMENT_SEPARATOR.encode())
        try:
            size += file.stat().st_size
            with open(file, "rb") as source:
                while chunk := source.read(4 * CHUNK_SIZE):
                    tally.add(chunk)
        except OSError as err:
            raise CorpusError(f"cannot read {file} ({err})") from err
        # A character cut off at a file's end is a bad byte there, not the next file's start.
        tally.add(b"", final=True)
    shown = str(files[0]) if len(files) == 1 or path is None else path
    codes = np.flatnonzero(tally.counts)
    counts = tally.counts[codes]
    most = np.lexsort((codes, -counts))[:top]
    least = np.lexsort((codes, counts))[:top]
    if tally.invalid_at is None:
        encoding = "UTF-8"
    else:
        encoding = f"not valid UTF-8 (first bad byte at offset {tally.invalid_at:,})"
    return {
        "path": shown,
        "files": len(files),
        "size_bytes": size,
        "valid_utf8": tally.invalid_at is None,
        "invalid_offset": tally.invalid_at,
        "encoding": encoding,
        "characters": int(counts.sum()),
        "distinct": int(codes.size),
        "most_common": [(chr(codes[i]), int(counts[i])) for i in most],
        "least_common": [(chr(codes[i]), int(counts[i])) for i in least],
    }


class _CharTally:
    """Counts code points of UTF-8 fed in chunks; bad bytes count as U+FFFD after the first."""

    def __init__(self) -> None:
        self.counts = np.zeros(sys.maxunicode + 1, dtype=np.int64)
        self.invalid_at: int | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._fed = 0

    def add(self, data: bytes, *, final: bool = False) -> None:
        pending = len(self._decoder.getstate()[0])
        if not pending and data.isascii():
            # Pure ASCII is most text; counting bytes skips decoding entirely.
            self.counts[:128] += np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=128)
            self._fed += len(data)
            return
        start = self._fed - pending
        self._fed += len(data)
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as err:
            # err.object is the decoder's buffered bytes plus data, so err.start counts from start.
            self.invalid_at = start + err.start
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
            text = err.object[: err.start].decode("utf-8")
            text += self._decoder.decode(err.object[err.start :], final)
        if text:
            found = np.bincount(np.frombuffer(text.encode("utf-32-le"), dtype="<u4"))
            self.counts[: found.size] += found
