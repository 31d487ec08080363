"""MkDocs hooks of lstmkit's documentation site (``hooks:`` in mkdocs.yml).

1. **The home page is the README.** ``docs/index.md`` holds the marker
   ``<!-- include: README.md -->``; the README's text replaces it when the page is read, so the
   site's home page and the repository's front page are one text. Its links are relative to
   the repository root and are rewritten like every other link (step 2).
2. **Links to repository files outside ``docs/``** (``../benchmarks/results/x.json``,
   ``../lstmkit/inspect.py``, the README's ``docs/equations.md`` …) do not exist on a site
   built from ``docs/`` alone, and MkDocs's strict mode fails on them. Each such link is
   resolved against the file it was written in: a target inside ``docs/`` becomes the
   page-relative link MkDocs expects (and MkDocs then checks it, anchors included); a target
   elsewhere in the repository is copied into the built site under ``repo/<its path>`` and
   the link points there, so a reader of the site opens the very file (a results JSON, a
   source file) without leaving the site or needing a network. A target that does not exist
   is a warning, and ``mkdocs build --strict`` fails on it: nothing is dropped silently.
3. **Example markers stay invisible.** ``<!-- skip-example: reason -->`` comments (read by
   ``tests/test_docs.py``) are HTML comments and render as nothing.

No network is used: everything the pages refer to is inside the built directory.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.lstmkit")

ROOT = Path(__file__).resolve().parents[1]          # the repository
INCLUDE = re.compile(r"<!--\s*include:\s*(?P<path>[^\s>]+)\s*-->")
# [text](target) and ![alt](target), target without spaces, optional "title"; not inside code
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]\n]*)\]"
                  r"\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//|^#")



def _split_code(markdown: str):
    """Yield (is_code, text) pieces: fenced blocks and inline code spans are left alone."""
    out, buf, in_fence = [], [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line.lstrip()):
            if not in_fence:
                out.append((False, "".join(buf)))
                buf = [line]
                in_fence = True
            else:
                buf.append(line)
                out.append((True, "".join(buf)))
                buf = []
                in_fence = False
            continue
        buf.append(line)
    out.append((in_fence, "".join(buf)))
    for is_code, text in out:
        if is_code:
            yield True, text
            continue
        # inline code spans: `...` or ``...``
        pos = 0
        for m in re.finditer(r"(`+)(?:.+?)\1", text, flags=re.S):
            yield False, text[pos:m.start()]
            yield True, m.group(0)
            pos = m.end()
        yield False, text[pos:]


def _targets(markdown: str, base: Path):
    """The relative link targets of ``markdown`` (outside code), resolved against ``base``."""
    for is_code, text in _split_code(markdown):
        if is_code:
            continue
        for m in LINK.finditer(text):
            target = m.group("target")
            if not EXTERNAL.match(target):
                yield m, (base / target.partition("#")[0]).resolve()


def _outside(resolved: Path, docs_dir: Path) -> str | None:
    """``repo/<path>`` for an existing repository file outside ``docs/``, else None."""
    if not resolved.is_file():
        return None
    try:
        resolved.relative_to(docs_dir)
        return None
    except ValueError:
        pass
    try:
        return posixpath.join("repo", resolved.relative_to(ROOT).as_posix())
    except ValueError:
        return None


def _sources(config) -> list[tuple[Path, Path]]:
    """(file, folder its links are relative to) for every page and every included file."""
    docs_dir = Path(config["docs_dir"]).resolve()
    out = []
    for md in sorted(docs_dir.rglob("*.md")):
        out.append((md, md.parent))
        for m in INCLUDE.finditer(md.read_text(encoding="utf-8")):
            inc = (md.parent / m.group("path")).resolve()
            if inc.is_file():
                out.append((inc, inc.parent))
    return out


def on_files(files, config):
    """Add every repository file that a page links to, outside docs/, as ``repo/<path>``."""
    docs_dir = Path(config["docs_dir"]).resolve()
    added = set()
    for src, base in _sources(config):
        for _, resolved in _targets(src.read_text(encoding="utf-8"), base):
            uri = _outside(resolved, docs_dir)
            if uri and uri not in added and files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(resolved)))
                added.add(uri)
    if added:
        log.info("linked repository files served under repo/: %d", len(added))
    return files


def _rewrite(markdown: str, base: Path, page_dir: Path, docs_dir: Path, where: str) -> str:
    """Rewrite the relative links of ``markdown``, written relative to ``base``, as links
    relative to ``page_dir`` (the page's folder inside ``docs_dir``), which MkDocs then
    resolves and checks. A target outside docs/ points at its copy under ``repo/``."""
    def fix(m: re.Match) -> str:
        target = m.group("target")
        if EXTERNAL.match(target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if not resolved.exists():
            log.warning("%s: link to '%s', which does not exist in the repository",
                        where, target)
            return m.group(0)
        uri = _outside(resolved, docs_dir)
        if uri is None and not resolved.is_relative_to(docs_dir):
            log.warning("%s: link to '%s', a folder or a path outside the repository; "
                        "link a file instead", where, target)
            return m.group(0)
        dest = docs_dir / uri if uri else resolved
        new = Path(os.path.relpath(dest, page_dir)).as_posix() + (f"#{anchor}" if anchor else "")
        return f"{m.group('bang')}[{m.group('text')}]({new}{m.group('title') or ''})"

    return "".join(text if is_code else LINK.sub(fix, text)
                   for is_code, text in _split_code(markdown))


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"]).resolve()
    src = (docs_dir / page.file.src_path).resolve()
    markdown = _rewrite(markdown, src.parent, src.parent, docs_dir, page.file.src_path)

    def include(m: re.Match) -> str:
        inc = (src.parent / m.group("path")).resolve()
        if not inc.is_file():
            log.warning("%s: include of '%s', which does not exist", page.file.src_path,
                        m.group("path"))
            return m.group(0)
        return _rewrite(inc.read_text(encoding="utf-8"), inc.parent, src.parent, docs_dir,
                        f"{page.file.src_path} (included {inc.relative_to(ROOT)})")

    return INCLUDE.sub(include, markdown)
