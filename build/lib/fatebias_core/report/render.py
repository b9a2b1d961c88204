"""The report's page from its Jinja2 templates (``templates/*.html.j2``, package data).

Autoescape is on: gene, guide and file names come from the user's files and are
escaped wherever they appear. The style sheet and the script (``static/``) are read
with :mod:`importlib.resources` and written into the page, so it opens offline and
links nothing outside itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from fatebias_core.report.parts import Absent, Badge, is_number

PACKAGE = "fatebias_core.report"
PAGE_TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Static:
    """The style sheet and script written into the page (trusted package files, not escaped)."""

    css: Markup
    js: Markup


def read_static() -> Static:
    """``static/report.css`` and ``static/report.js`` of the installed package."""
    folder = files(PACKAGE) / "static"
    return Static(css=Markup(folder.joinpath("report.css").read_text(encoding="utf-8")),
                  js=Markup(folder.joinpath("report.js").read_text(encoding="utf-8")))


def environment() -> Environment:
    """The Jinja2 environment of the report: package templates, autoescape, strict names.

    Tests ``absent``, ``badge`` and ``number_like`` let templates tell parts apart.
    """
    env = Environment(
        loader=PackageLoader(PACKAGE, "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.tests["absent"] = lambda v: isinstance(v, Absent)
    env.tests["badge"] = lambda v: isinstance(v, Badge)
    env.tests["number_like"] = is_number
    return env


def render_page(context: Any) -> str:
    """The page's HTML for a :class:`~fatebias_core.report.context.ReportContext`."""
    return environment().get_template(PAGE_TEMPLATE).render(ctx=context, static=read_static())
