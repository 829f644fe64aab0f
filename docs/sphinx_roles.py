"""Griffe extension for the book: the reStructuredText in the docstrings, as Markdown.

(It also spells out ``__all__`` entries of the form ``*submodule.__all__``, which griffe
leaves unexpanded: see :func:`_expand_starred_exports`.)

The numpydoc docstrings are reStructuredText; mkdocstrings renders them as Markdown, where
two of their constructs would stay as written:

- roles (:func:`e_step`, :class:`~em_tutorial.nn.EMAU`): each becomes a link to the object's
  entry in the API reference when the object has one (found from the docstring's own module
  outwards, as Sphinx looks it up), and plain code otherwise (private helpers, NumPy,
  PyTorch). A link to an entry that does not exist is never written, so strict mode fails
  only on the links that the pages themselves write;
- simple tables (columns under runs of ``=``): each becomes a Markdown table; a line whose
  first cell is empty, or whose only text is in its first cell, continues the row above.
"""

from __future__ import annotations

import re

import griffe

# :func:`name`, :py:class:`~pkg.Name`, :meth:`.Name.method`, with or without "()"
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|obj|exc|const):`(~?)\.?([\w.]+?)(?:\(\))?`")


TABLE_BORDER = re.compile(r"^( *)(=+)( +=+)+ *$")


def _columns(border: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _cells(line: str, columns) -> list[str]:
    """The text under each column; the last column takes the rest of the line."""
    cells = [line[start:end].strip() for start, end in columns[:-1]]
    return cells + [line[columns[-1][0]:].strip()]


def _markdown_table(rows, header) -> list[str]:
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
    width = len(rows[0]) if rows else len(header)
    return [line(header or [""] * width), "|" + " --- |" * width] + [line(row) for row in rows]


def rst_tables_to_markdown(text: str) -> str:
    """Rewrite every reStructuredText simple table in ``text`` as a Markdown table."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if not TABLE_BORDER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        columns, rows, header = _columns(lines[i]), [], None
        i += 1
        while i < len(lines):
            if TABLE_BORDER.match(lines[i]):
                i += 1
                # text right under a border: that border closed the header (rst wants a blank
                # line after a table)
                if header is None and rows and i < len(lines) and lines[i].strip():
                    header, rows = rows[0], []
                    continue
                break
            cells = _cells(lines[i], columns)
            # rst's continuation line has an empty first cell; a wrapped first cell alone on
            # its line is one too
            if rows and (not cells[0] or not any(cells[1:])):
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
            elif lines[i].strip():
                rows.append(cells)
            i += 1
        out += ["", *_markdown_table(rows, header), ""]
    return "\n".join(out)


def _walk(obj):
    """``obj`` and everything defined in it (aliases excluded: they share their target's docstring)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _expand_starred_exports(module) -> None:
    """``__all__ = [..., *submodule.__all__]``: put the submodule's names in the list.

    Griffe reads such an entry as an expression and leaves it there, so the names it stands
    for (``EMANet`` in ``em_tutorial.nn``) would not count as public and their entries would
    be missing from the page.
    """
    if not module.exports:
        return
    names = []
    for export in module.exports:
        if isinstance(export, str):
            names.append(export)
            continue
        source = module.members.get(getattr(export.parent, "name", ""))
        if getattr(export, "name", None) != "__all__" or source is None:
            names.append(export)
            continue
        target = source.final_target if source.is_alias else source
        names.extend(name for name in (target.exports or []) if isinstance(name, str))
    module.exports = names


def _canonical(obj) -> str | None:
    try:
        return obj.final_target.path if obj.is_alias else obj.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None  # an import from outside the package


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring in the package, once it is loaded.

    Parameters
    ----------
    pages : list of str
        The modules that have a page in the API reference; their public members (and the
        public members of their classes) are the entries a role can link to.
    """

    def __init__(self, pages: list[str]):
        super().__init__()
        self.pages = pages

    def on_package(self, *, pkg, loader, **kwargs):
        for module in _walk(pkg):
            if module.is_module:
                _expand_starred_exports(module)
        documented = self._documented(loader)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rst_tables_to_markdown(ROLE.sub(
                    lambda match: self._reference(match, obj, loader, documented),
                    obj.docstring.value))

    def _documented(self, loader) -> dict[str, str]:
        """Canonical path -> the path of its entry in the API reference.

        An entry is what the pages show (mkdocs.yml): a page's module, its public members
        that have a docstring, submodules aside, and their classes' public members that have one.
        """
        documented = {}

        def add(member, entry):
            documented.setdefault(entry, entry)
            canonical = _canonical(member)
            if canonical:
                documented.setdefault(canonical, entry)

        for page in self.pages:
            try:
                module = loader.modules_collection[page]
            except KeyError:
                continue
            add(module, page)
            for name, member in module.members.items():
                if name.startswith("_") or not member.is_public or _canonical(member) is None:
                    continue
                if member.is_module or member.docstring is None:
                    continue
                add(member, f"{page}.{name}")
                if member.is_class:
                    for method, item in member.members.items():
                        if not method.startswith("_") and item.docstring is not None:
                            add(item, f"{page}.{name}.{method}")
        return documented

    @staticmethod
    def _reference(match, obj, loader, documented) -> str:
        short, target = match.group(1), match.group(2)
        text = f"`{target.rsplit('.', 1)[-1] if short else target}`"
        scopes = [None]
        scope = obj
        while scope is not None:
            scopes.append(scope.path)
            scope = scope.parent
        for scope in scopes:
            candidate = f"{scope}.{target}" if scope else target
            if candidate in documented:
                return f"[{text}][{documented[candidate]}]"
            try:
                found = loader.modules_collection[candidate]
            except (KeyError, ValueError, griffe.AliasResolutionError):
                continue
            canonical = _canonical(found)
            if canonical in documented:
                return f"[{text}][{documented[canonical]}]"
        return text
