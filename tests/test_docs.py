"""The documentation site: it builds in strict mode, its pages' Python examples run, and the
built HTML loads nothing from another host.

* ``mkdocs build --strict`` (mkdocs.yml) into a temporary folder: any warning — a broken
  link or anchor, a page missing from the nav, a docstring mkdocstrings cannot render, a
  link to a repository file that does not exist — fails the build and this test.
* Every fenced ``python`` block of every page in ``docs/`` and of ``README.md`` runs, the
  blocks of one page in order in one namespace (as a reader would paste them), in a
  temporary working folder. A block that cannot run in a test is marked in the Markdown by
  an HTML comment on the line before its fence, ``<!-- skip-example: reason -->``; each such
  block is reported as a skipped test with its reason, and the markers are counted.
* No ``src``/``href`` of a script, style sheet, font, image or frame in the built pages (nor a
  ``url(...)``/``@import`` in its CSS) points to another host: the site works offline.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import types
from contextlib import redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP = re.compile(r"^<!--\s*skip-example:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)\s*$")


# --------------------------------------------------------------------------- the examples

def examples(path: Path) -> list[dict]:
    """The fenced code blocks of a Markdown file: language, first line number (1-based, the
    fence), code (dedented by the fence's indent), and the skip reason if the line before
    the fence (blank lines aside) is a ``skip-example`` marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group("indent"), m.group("lang"), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: code fence never closed")
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        skip = SKIP.match(lines[k].strip()) if k >= 0 else None
        out.append({"lang": lang, "line": start + 1, "code": "\n".join(body) + "\n",
                    "skip": skip.group("reason") if skip else None})
        i = j + 1
    return out


PAGES = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))


def _python(page: Path) -> list[dict]:
    return [e for e in examples(page) if e["lang"] in ("python", "py", "pycon")]


RUNNABLE = [p for p in PAGES if any(e["skip"] is None for e in _python(p))]
SKIPPED = [(p, e) for p in PAGES for e in _python(p) if e["skip"] is not None]


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_example_extraction_by_hand(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\na = 1\n```\n\n<!-- skip-example: trains for minutes -->\n"
                    "```python\ntrain()\n```\n\n  ```bash\n  ls\n  ```\n- item\n\n"
                    "    ```python\n    b = a + 1\n    ```\n")
    got = examples(page)
    assert [(e["lang"], e["line"], e["code"], e["skip"]) for e in got] == [
        ("python", 3, "a = 1\n", None),
        ("python", 8, "train()\n", "trains for minutes"),
        ("bash", 12, "ls\n", None),
        ("python", 17, "b = a + 1\n", None),
    ]
    page.write_text("```python\nnever closed\n")
    with pytest.raises(AssertionError, match="never closed"):
        examples(page)


def test_every_skip_marker_is_on_a_python_block_and_says_why():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        markers = sum(1 for line in text.splitlines() if SKIP.match(line.strip()))
        marked = [e for e in _python(page) if e["skip"] is not None]
        assert markers == len(marked), (
            f"{_rel(page)}: {markers} skip-example markers but {len(marked)} python blocks "
            "right after one: a marker must be the line just before a ```python fence")
        for e in marked:
            assert len(e["skip"]) >= 10, f"{_rel(page)}:{e['line']}: say why it is skipped"


def test_there_are_examples_to_run():
    n_run = sum(1 for p in PAGES for e in _python(p) if e["skip"] is None)
    assert n_run >= 12 and len(RUNNABLE) >= 6, (n_run, [_rel(p) for p in RUNNABLE])
    # the skipped ones are the exception, and each is listed as a skipped test below
    assert len(SKIPPED) <= n_run // 2, [f"{_rel(p)}:{e['line']}" for p, e in SKIPPED]


@pytest.mark.parametrize("page", RUNNABLE, ids=_rel)
def test_examples_run(page, tmp_path, monkeypatch):
    """Run the page's python blocks in order, in one namespace, in an empty folder."""
    import torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # the namespace is a real module, so classes an example defines pickle (torch.save)
    module = types.ModuleType(f"docs_example_{page.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for e in _python(page):
        if e["skip"] is not None:
            continue
        code = compile(e["code"], f"{_rel(page)}:{e['line']}", "exec")
        try:
            with redirect_stdout(io.StringIO()):
                exec(code, namespace)
        except Exception as exc:                     # name the page and line of the block
            raise AssertionError(
                f"the example at {_rel(page)}:{e['line']} fails: {type(exc).__name__}: {exc}"
            ) from exc


@pytest.mark.parametrize("page, example", SKIPPED or [
    pytest.param(None, None, marks=pytest.mark.skip(reason="no example is marked skip-example"))],
    ids=[f"{_rel(p)}:{e['line']}" for p, e in SKIPPED] or ["none"])
def test_skipped_examples_compile(page, example):
    """A skipped example is still valid Python; it is then reported as skipped with its reason."""
    compile(example["code"], f"{_rel(page)}:{example['line']}", "exec")
    pytest.skip(f"{_rel(page)}:{example['line']}: {example['skip']}")


# --------------------------------------------------------------------------- the link hook

def _hooks():
    sys.path.insert(0, str(ROOT / "docs_build"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs_build"))
    return hooks


def test_link_hook_rewrites_repository_links(caplog):
    hooks = _hooks()
    docs = DOCS.resolve()
    md = ("See [the trainer](../lstmkit/train/trainer.py), [eq](equations.md#x), "
          "![img](img/gradient-flow.png), [web](https://example.org/a.md), `[code](../x.py)`\n"
          "```\n[in a fence](../nothing.py)\n```\n")
    with caplog.at_level(logging.WARNING):
        out = hooks._rewrite(md, docs, docs, docs, "page.md")
    assert "[the trainer](repo/lstmkit/train/trainer.py)" in out
    assert "[eq](equations.md#x)" in out and "![img](img/gradient-flow.png)" in out
    assert "[web](https://example.org/a.md)" in out
    assert "`[code](../x.py)`" in out and "[in a fence](../nothing.py)" in out
    assert not caplog.records
    # the README's links are relative to the repository root; on docs/index.md they become
    readme = "[arch](docs/architectures.md#grid), [lock](requirements.lock)"
    out = hooks._rewrite(readme, ROOT, docs, docs, "index.md")
    assert out == "[arch](architectures.md#grid), [lock](repo/requirements.lock)"
    # from a page in a sub-folder
    out = hooks._rewrite("[r](../../README.md)", docs / "api", docs / "api", docs, "api/x.md")
    assert out == "[r](../repo/README.md)"


def test_link_hook_warns_on_missing_targets(caplog):
    hooks = _hooks()
    docs = DOCS.resolve()
    with caplog.at_level(logging.WARNING):
        out = hooks._rewrite("[gone](../benchmarks/results/no-such.json) [dir](../lstmkit)",
                             docs, docs, docs, "page.md")
    assert out == "[gone](../benchmarks/results/no-such.json) [dir](../lstmkit)"
    msgs = [r.getMessage() for r in caplog.records]
    assert any("no-such.json" in m and "does not exist" in m for m in msgs), msgs
    assert any("'../lstmkit'" in m and "folder" in m for m in msgs), msgs


# --------------------------------------------------------------------------- the build

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise                           # CI installs the lock: the docs must build there
        pytest.skip(f"the docs extra is not installed ({exc}): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(out), "--config-file", str(ROOT / "mkdocs.yml")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    return out, proc


def test_strict_build_has_no_warnings(site):
    out, proc = site
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert not re.search(r"^WARNING|^ERROR", log, flags=re.M), log[-6000:]
    assert (out / "index.html").is_file() and (out / "api" / "modules" / "index.html").is_file()


def test_every_page_is_built(site):
    out, _ = site
    for md in DOCS.rglob("*.md"):
        rel = md.relative_to(DOCS).with_suffix("")
        html = out / ("index.html" if rel.name == "index" and rel.parent == Path(".")
                      else rel.parent / ("" if rel.name == "index" else rel.name) / "index.html")
        assert html.is_file(), f"{md.relative_to(ROOT)} was not built ({html})"


def test_home_page_is_the_readme(site):
    out, _ = site
    page = (out / "index.html").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for heading in re.findall(r"^## (.+)$", readme, flags=re.M):
        plain = re.sub(r"[`*]", "", heading).replace("&", "&amp;")
        assert plain in re.sub(r"</?code>", "", page), f"README section {heading!r} missing"


def test_api_reference_covers_every_public_name(site):
    import lstmkit

    out, _ = site
    html = "".join(p.read_text(encoding="utf-8") for p in (out / "api").rglob("*.html"))
    missing = [n for n in lstmkit.__all__ if f'id="lstmkit.{n}"' not in html]
    assert not missing, f"not in the API reference: {missing}"
    # and the public submodules users import
    for mod in ["lstmkit.attention", "lstmkit.seq2seq", "lstmkit.crf", "lstmkit.tagging",
                "lstmkit.interop.onnx", "lstmkit.interop.keras", "lstmkit.data.synthetic",
                "lstmkit.data.text", "lstmkit.data.series", "lstmkit.data.ucr",
                "lstmkit.inspect.gradient_flow", "lstmkit.summary", "lstmkit.viz.report"]:
        assert f'id="{mod}"' in html, f"{mod} is not in the API reference"
    # every documented object has a docstring: mkdocstrings renders none for an empty one
    for name in lstmkit.__all__:
        obj = getattr(lstmkit, name)
        if not isinstance(obj, str):
            assert (obj.__doc__ or "").strip(), f"lstmkit.{name} has no docstring"


def test_linked_repository_files_are_in_the_site(site):
    out, _ = site
    for html in out.rglob("*.html"):
        for href in re.findall(r'href="([^"#]*repo/[^"#]+)"', html.read_text(encoding="utf-8")):
            target = (html.parent / href).resolve()
            assert target.is_file(), f"{html.relative_to(out)} links to {href}, not built"


class _Resources(HTMLParser):
    """Every URL an HTML page makes the browser load (not the plain <a href> links)."""

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "srcset", "poster", "data"):
            if a.get(key):
                self.urls.append((tag, a[key]))
        if tag == "link" and a.get("href"):
            self.urls.append((tag, a["href"]))
        if a.get("style"):
            self.urls += [(tag, u) for u in re.findall(r"url\(\s*['\"]?([^'\")]+)", a["style"])]


def _external(url: str) -> bool:
    return bool(re.match(r"^\s*(https?:)?//", url, flags=re.I))


def test_resource_checker_by_hand():
    p = _Resources()
    p.feed('<link rel="stylesheet" href="https://fonts.googleapis.com/css"><script src="a.js">'
           '</script><img src="//cdn.example/x.png"><a href="https://arxiv.org/abs/1">paper</a>'
           '<div style="background: url(\'http://x/y.png\')"></div>')
    assert [u for _, u in p.urls if _external(u)] == [
        "https://fonts.googleapis.com/css", "//cdn.example/x.png", "http://x/y.png"]


def test_built_site_loads_nothing_from_other_hosts(site):
    out, _ = site
    bad = []
    for html in out.rglob("*.html"):
        p = _Resources()
        p.feed(html.read_text(encoding="utf-8"))
        bad += [f"{html.relative_to(out)}: <{tag}> {u}" for tag, u in p.urls if _external(u)]
        text = html.read_text(encoding="utf-8")
        bad += [f"{html.relative_to(out)}: {m}" for m in
                re.findall(r"@import\s+url\(\s*['\"]?(?:https?:)?//[^)]+", text)]
    for css in out.rglob("*.css"):
        text = css.read_text(encoding="utf-8")
        bad += [f"{css.relative_to(out)}: {u}" for u in
                re.findall(r"url\(\s*['\"]?((?:https?:)?//[^'\")]+)", text)]
        bad += [f"{css.relative_to(out)}: {u}" for u in
                re.findall(r"@import\s+['\"]((?:https?:)?//[^'\"]+)", text)]
    assert not bad, "external resources:\n" + "\n".join(bad[:40])


# --------------------------------------------------------------------------- docstrings

HIDDEN = {"forward", "extra_repr", "check_forward_args", "permute_hidden",
          "get_expected_cell_size"}                  # mkdocs.yml's filters
INHERITED = ["from_torch", "to_torch", "layer_weights", "output_size", "num_directions"]


def _documented() -> list[str]:
    """Every object an API page names (``::: x`` and its ``members:`` list)."""
    out = []
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^::: (\S+)\n((?:    .*\n)*)", text, flags=re.M):
            members = re.findall(r"^        - (\S+)", m.group(2), flags=re.M)
            out += [f"{m.group(1)}.{x}" for x in members] if members else [m.group(1)]
    return out


def _resolve(path: str):
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_every_documented_name_has_a_docstring():
    """What the API pages show has a docstring: each named object, and each public method
    and property a documented class defines (a method may take its docstring from the
    lstmkit base class it overrides, as the reference shows it)."""
    import inspect

    sys.path.insert(0, str(ROOT / "docs_build"))
    try:
        from griffe_rst import inherited_doc
    finally:
        sys.path.remove(str(ROOT / "docs_build"))
    names = _documented()
    assert len(names) > 100, len(names)
    missing = []
    for name in names:
        obj = _resolve(name)
        if isinstance(obj, (str, int, float, tuple, list, dict)):
            continue                                  # data (``__version__``, ``CORPORA``)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        inherited = {a: inspect.getattr_static(obj, a) for a in INHERITED if hasattr(obj, a)}
        for attr, raw in {**inherited, **vars(obj)}.items():
            if attr.startswith("_") or attr in HIDDEN:
                continue
            fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
            fn = fn.fget if isinstance(fn, property) else fn
            if not callable(fn):
                continue
            if not (getattr(fn, "__doc__", None) or "").strip() and not inherited_doc(
                    f"{obj.__module__}.{obj.__qualname__}.{attr}"):
                missing.append(f"{name}.{attr}")
    assert not missing, "no docstring: " + ", ".join(missing)


# --------------------------------------------------------------------------- in a browser

def test_site_renders_in_chromium_without_console_errors(site):
    """Home, an API page and the comparison page, served over HTTP as a reader gets them,
    in headless Chromium (the set-up of tests/test_report.py): no console error, the
    navigation and the search box are there, and the search index loads (from the site)."""
    from test_report import _browser  # the set-up of the report's browser tests

    out, proc = site
    assert proc.returncode == 0
    sys.path.insert(0, str(ROOT / "docs_build"))
    try:
        from screenshots import serve
    finally:
        sys.path.remove(str(ROOT / "docs_build"))
    browser = _browser()                # skips (fails in CI) without Chromium or selenium
    from selenium.webdriver.support.ui import WebDriverWait
    server, base = serve(out)
    try:
        for path, heading in [("", "lstmkit"), ("api/modules/", "Modules and cells"),
                              ("choosing-a-cell/", "Choosing a cell")]:
            browser.get(base + path)
            WebDriverWait(browser, 120).until(
                lambda b: b.execute_script("return document.readyState") == "complete")
            assert browser.find_element("css selector", "article h1").text == heading
            assert browser.find_elements("css selector", "nav.md-nav")
            assert browser.find_elements("css selector", "input.md-search__input")
            errors = [e["message"] for e in browser.get_log("browser")
                      if e["level"] == "SEVERE"]
            assert not errors, f"{path or '/'}: {errors}"
        # the search index is the site's own file, fetched from the same server
        index = browser.execute_script(
            "return fetch('../search/search_index.json').then(r => r.status)")
        assert index == 200
    finally:
        browser.quit()
        server.shutdown()


def test_docstring_markup_conversion_by_hand():
    sys.path.insert(0, str(ROOT / "docs_build"))
    try:
        from griffe_rst import (
            definition_lists,
            inherited_doc,
            rst_roles_to_code,
            rst_tables_to_code,
        )
    finally:
        sys.path.remove(str(ROOT / "docs_build"))
    assert rst_roles_to_code("see :class:`torch.nn.LSTM` and :func:`~lstmkit.record`") == \
        "see `torch.nn.LSTM` and `record`"
    assert rst_roles_to_code(":py:meth:`a.b` :ref:`the text <target>`") == "`a.b` `the text`"
    assert rst_roles_to_code("rows::\n\n    x = 1\nend ::\n") == "rows:\n\n    x = 1\nend:\n"
    table = "intro\n===  ===\na    b\n===  ===\n1    2\n===  ===\nafter"
    assert rst_tables_to_code(table) == (
        "intro\n\n```text\n===  ===\na    b\n===  ===\n1    2\n===  ===\n```\n\nafter")
    assert rst_tables_to_code("a\n=====\nb") == "a\n=====\nb"      # a heading rule, no table
    doc = ("Intro.\n\nVariant keywords:\n    peephole: add p ⊙ c\n        to i.\n"
           "    a, b,\n    c: the ablations.\n\nShapes: as torch.nn.")
    assert definition_lists(doc) == (
        "Intro.\n\n**Variant keywords:**\n\n- `peephole`: add p ⊙ c to i.\n"
        "- `a`, `b`, `c`: the ablations.\n\n\nShapes: as torch.nn.")
    code = "Equations (batch first)::\n\n    encoder:  (k_1 … k_S) = BiRNN(x)\n"
    assert definition_lists(code) == code            # a literal block is left alone
    # a method without a docstring takes its lstmkit base class's, never torch's
    assert inherited_doc("lstmkit.data.synthetic.Copy.sample").startswith("``n`` sequences")
    assert inherited_doc("lstmkit.nn.lstm.LSTM.forward") is None
