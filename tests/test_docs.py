"""The docs hold together: every relative link and anchor resolves, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text outside fenced blocks and code spans, where a link is a link."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than - and _ dropped, spaces
    to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link's text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: name, name-1, name-2, ...
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(path: Path) -> list[str]:
    targets = LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, ...


def broken_links(pages: list[Path]) -> list[str]:
    broken = []
    for page in pages:
        for target in links(page):
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where} names no file")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                broken.append(f"{where} names no heading of {dest.name}")
    return broken


def test_every_relative_link_and_anchor_resolves():
    assert len(PAGES) > 10
    assert sum(len(links(page)) for page in PAGES) > 20
    assert broken_links(PAGES) == []


def test_the_check_finds_a_broken_file_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "a.md").write_text(
        "# Title\n\n## The `--x` option: here\n\n```\n[not](a link.md)\n```\n"
        "[ok](#the---x-option-here) [ok](b.md#b) [gone](c.md) [bad](b.md#nothing) "
        "`[code](gone.md)` [web](https://example.com/x.md)\n",
        encoding="utf-8",
    )
    (tmp_path / "b.md").write_text("# B\n", encoding="utf-8")
    assert broken_links([tmp_path / "a.md"]) == [
        "a.md: (c.md) names no file",
        "a.md: (b.md#nothing) names no heading of b.md",
    ]


def test_slugs_follow_github():
    assert (
        slug("Pages from other sites: `--allow-origin`") == "pages-from-other-sites---allow-origin"
    )
    assert slug("### `model.generate(prime, options)` → `Promise<string>`".lstrip("# ")) == (
        "modelgenerateprime-options--promisestring"
    )
    assert (
        slug("Start from a trained model: `--init-from`")
        == "start-from-a-trained-model---init-from"
    )


def test_the_readme_is_short_and_holds_the_ci_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 260
    command = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert command.startswith("python -m venv .venv && ")
    assert f"```bash\n{command}\n```" in readme


def test_architecture_names_every_module():
    """Each file under textgen/ is named in ARCHITECTURE.md, in its folder's section (the top's
    section is headed `textgen/`), by its path inside that folder; a shipped model by its folder."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    sections = {}
    for section in text.split("\n## ")[1:]:
        heading = section.splitlines()[0]
        for folder in re.findall(r"`([\w]+)/`", heading):
            sections[folder] = section
    package = REPO / "textgen"
    unnamed = []
    for path in sorted(package.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        parts = path.relative_to(package).parts
        if parts[0] == "models":
            folder, name = "textgen", "/".join(parts[:2]) + "/"
        elif len(parts) > 1 and (package / parts[0] / "__init__.py").exists():
            folder, name = parts[0], "/".join(parts[1:])
        else:
            folder, name = "textgen", "/".join(parts)
        if f"`{name}`" not in sections.get(folder, ""):
            unnamed.append("/".join(parts))
    assert unnamed == []
