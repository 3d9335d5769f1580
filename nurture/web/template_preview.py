"""Render an email template for one lead, as the worker would, for the editor's preview and test sends.

No Flask here. ``check_source`` compiles an edited template with
``rendering.compile_source`` (the check ``campaigns load`` runs) and returns
the error with its line; ``render_for`` renders a compiled template for a
lead (or the sample lead) with ``sending.render_context``; ``test_message``
builds the MIME message a test send hands to SMTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import make_msgid
from pathlib import Path

from ..config import Settings
from ..errors import TemplateError
from ..mime import build_message
from ..models import Lead, User
from ..rendering import CompiledSource, Renderer, Rendered, compile_source, sample_context
from ..sending import render_context

_renderer = Renderer()
_LINE = re.compile(r" line (\d+):")


@dataclass
class SourceProblem:
    field: str  # "subjects" or "mjml"
    line: int | None
    message: str


def check_source(settings: Settings, name: str, language: str, subjects_text: str, mjml: str) -> CompiledSource | SourceProblem:
    """Compile an edited template; includes resolve in the templates folder, as for files."""
    mjml = mjml.replace("\r\n", "\n")  # browsers send textareas with CRLF line ends; mrml rejects a CR
    subjects = [line.strip() for line in subjects_text.splitlines() if line.strip()]
    if not subjects:
        return SourceProblem("subjects", None, "give at least one subject line")
    path = Path(settings.templates_dir) / f"{name}.{language}.mjml"
    try:
        return compile_source(name, language, subjects, mjml, path, 1)
    except TemplateError as exc:
        text = str(exc).replace(f"{path} ", "").replace(str(path), "").lstrip(": ")
        match = _LINE.search(" " + text)
        field = "subjects" if re.search(r"\bsubject \d+:", text) else "mjml"
        return SourceProblem(field, int(match[1]) if match and field == "mjml" else None, text)


def render_for(settings: Settings, template, lead: Lead | None, owner: User | None) -> Rendered:
    """``template`` (an ``EmailTemplate`` row or a ``CompiledSource``) for ``lead``, or the sample lead."""
    if lead is None:
        context = sample_context()
    else:
        context = render_context(settings, lead, owner, f"{settings.base_url.rstrip('/')}/u/preview")
    return _renderer.render(template, template.subjects[0], context)


def test_message(settings: Settings, rendered: Rendered, to_name: str, to_address: str, at: datetime) -> bytes:
    unsubscribe = f"{settings.base_url.rstrip('/')}/u/test"
    return build_message(from_name=settings.from_name, from_address=settings.from_address, to_name=to_name,
                         to_address=to_address, subject=f"[test] {rendered.subject}", text=rendered.text,
                         html=rendered.html, message_id=make_msgid(domain=settings.mail_domain), date=at,
                         unsubscribe_url=unsubscribe, unsubscribe_mailto=f"mailto:{settings.from_address}")
