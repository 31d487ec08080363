"""A Griffe extension for lstmkit's docstrings (``extensions:`` of mkdocstrings in mkdocs.yml).

lstmkit's docstrings are written for ``help()`` and Sphinx alike: cross-references are
reStructuredText roles (``:class:`torch.nn.LSTM```, ``:func:`~lstmkit.record```) and
literal blocks follow ``::``. Rendered as Markdown the roles would show their markup. This
extension turns each role into a code span of the name it names (``~`` keeps the last
component, as in Sphinx) before mkdocstrings renders the docstring; the ``::`` blocks are
indented, so Markdown already shows them as code.
"""

from __future__ import annotations

import importlib
import inspect
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const|ref):"
                  r"`(?P<name>[^`]+)`")


def _plain(m: re.Match) -> str:
    name = m.group("name").strip()
    if "<" in name and name.endswith(">"):        # :ref:`text <target>`
        name = name[: name.index("<")].strip()
    if name.startswith("~"):
        name = name[1:].rsplit(".", 1)[-1]
    return f"`{name}`"


LITERAL = re.compile(r"(?m)(\S)[ ]?::[ ]*$")


RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")


def rst_tables_to_code(text: str) -> str:
    """reST simple tables (``=====  =====`` rules above, below the header and at the end)
    as fenced text blocks, so their columns stay aligned."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        if RULE.match(lines[i]):
            rules = [j for j in range(i, len(lines)) if RULE.match(lines[j])][:3]
            if len(rules) == 3:
                out += ["", "```text", *lines[i:rules[2] + 1], "```", ""]
                i = rules[2] + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


TITLE = re.compile(r"^(?P<indent>\s*)(?P<title>[A-Z][\w ,()-]{0,38}[^:]):\s*$")
ITEM = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:,\s*\w+)*):\s+(?P<text>.*)$")
OPEN = re.compile(r"^\s+\w+(?:,\s*\w+)*,\s*$")


def definition_lists(text: str) -> str:
    """A short title line ending in one colon ("Variant keywords:") followed by indented
    ``name: text`` items (continuations indented further, a name list may wrap) becomes a
    bold title and a Markdown list, one item per name; Markdown would otherwise run the
    items together into one paragraph."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        head = TITLE.match(lines[i])
        first = ITEM.match(lines[i + 1]) if head and i + 1 < len(lines) else None
        if not (head and first and len(first.group("indent")) > len(head.group("indent"))):
            out.append(lines[i])
            i += 1
            continue
        base = len(first.group("indent"))
        items, j = [], i + 1
        while j < len(lines) and lines[j].strip():
            ind = len(lines[j]) - len(lines[j].lstrip())
            if ind < base:
                break
            m = ITEM.match(lines[j]) if ind == base else None
            if m:
                names = m.group("names")
                if items and items[-1][0].endswith(","):          # a name list that wrapped
                    items[-1] = [items[-1][0] + " " + names, m.group("text")]
                else:
                    items.append([names, m.group("text")])
            elif ind == base and OPEN.match(lines[j]):                # names, to be continued
                items.append([lines[j].strip(), ""])
            elif items:
                items[-1][1] += " " + lines[j].strip()
            else:
                break
            j += 1
        if not items:
            out.append(lines[i])
            i += 1
            continue
        out += [f"**{head.group('title')}:**", ""]
        for names, body in items:
            code = ", ".join(f"`{n.strip()}`" for n in names.rstrip(",").split(",") if n.strip())
            out.append(f"- {code}: {body}")
        out.append("")
        i = j
    return "\n".join(out)


def rst_roles_to_code(text: str) -> str:
    """``:role:`a.b.c``` → ```a.b.c```, ``:role:`~a.b.c``` → ```c```, and a line ending in
    reST's literal-block marker ``::`` ends in one colon (the indented block after it is
    already a Markdown code block)."""
    return LITERAL.sub(r"\1:", ROLE.sub(_plain, text))


def inherited_doc(path: str) -> str | None:
    """The docstring that ``help()`` would show for the method at ``path`` when it has none
    of its own, taken only from lstmkit's own base classes (never torch's ``forward`` text)."""
    parts = path.split(".")
    for i in range(len(parts) - 2, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:-1]:
                owner = getattr(owner, name)
        except AttributeError:
            return None
        if not inspect.isclass(owner):
            return None
        for base in owner.__mro__[1:]:
            if not base.__module__.startswith("lstmkit"):
                continue
            doc = getattr(base.__dict__.get(parts[-1]), "__doc__", None)
            if doc and doc.strip():
                return inspect.cleandoc(doc)
        return None
    return None


class RstRoles(griffe.Extension):
    """Rewrites reST roles in every docstring Griffe loads, and gives a method without a
    docstring the one it overrides in an lstmkit base class."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None and obj.is_function and obj.parent is not None \
                and obj.parent.is_class:
            doc = inherited_doc(obj.path)
            if doc:
                obj.docstring = griffe.Docstring(doc, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = rst_tables_to_code(
                rst_roles_to_code(definition_lists(obj.docstring.value)))
