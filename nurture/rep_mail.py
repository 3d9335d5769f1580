"""Emails to the team (not to leads): warm-up notices and weekly digests.

Rendered from Jinja templates in ``templates/notifications/`` (``NAME.txt`` and
``NAME.html``, autoescaped: lead data is untrusted) and sent through the same
SMTP settings as everything else. Written with the standard library's
``EmailMessage``: a handful of messages a day, so its cost does not matter and
its RFC 2047 / UTF-8 handling covers Cyrillic names in subjects and bodies.
They carry ``Auto-Submitted: auto-generated`` so auto-responders stay quiet.
"""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

import jinja2

from .config import PROJECT_ROOT, Settings
from .mime import ascii_address
from .models import User
from .transports import SmtpTransport

TEMPLATES_DIR = PROJECT_ROOT / "templates" / "notifications"
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                          autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
_env.filters["percent"] = lambda value: f"{(value or 0) * 100:.0f}%"
_env.filters["moment"] = lambda text: str(text)[:16].replace("T", " ")


def subject_for(template: str, payload: dict) -> str:
    if template == "warm_up":
        lead = payload["lead"]
        who = lead["name"] + (f" ({lead['company']})" if lead["company"] else "")
        verb = "Reply from" if payload.get("replied") else "Warm lead:"
        return f"{verb} {who}, {lead['probability'] * 100:.0f}%"
    if template == "rep_digest":
        return f"Your week {payload['week']}: {len(payload['warm'])} warm, {len(payload['stuck'])} stuck"
    if template == "manager_digest":
        return f"Pipeline review {payload['week']}"
    raise ValueError(f"no subject for notification template {template!r}")


def render(template: str, payload: dict, rep: User) -> tuple[str, str, str]:
    """(subject, text, html) of one team email."""
    context = {**payload, "user": {"name": rep.name or rep.email, "email": rep.email}}
    return (subject_for(template, payload), _env.get_template(f"{template}.txt").render(context),
            _env.get_template(f"{template}.html").render(context))


def build(settings: Settings, rep: User, subject: str, text: str, html: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(settings.from_name, addr_spec=ascii_address(settings.from_address))
    message["To"] = Address(rep.name, addr_spec=ascii_address(rep.email))
    message["Subject"] = subject
    message["Date"] = format_datetime(settings.clock.now())
    message["Message-ID"] = make_msgid(domain=settings.mail_domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message.as_bytes()


def send_rep_mail(settings: Settings, rep: User, kind: str, payload: dict) -> str:
    """Render and send one team email for a notification of ``kind``; return the server's answer."""
    subject, text, html = render(payload.get("template", kind), payload, rep)
    data = build(settings, rep, subject, text, html)
    with SmtpTransport(settings.smtp) as transport:
        return transport.send(settings.from_address, ascii_address(rep.email), data)
