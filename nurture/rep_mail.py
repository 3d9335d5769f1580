"""Emails to the team (not to leads): warm-up notices and weekly digests.

Rendered from Jinja templates in ``templates/notifications/`` (``NAME.LANG.txt``
and ``NAME.LANG.html``, autoescaped: lead data is untrusted) and sent through
the same SMTP settings as everything else. LANG is the recipient's
``User.language`` as it was when the notification was recorded: the payload
keeps it in ``language``, since its words (the probability explanation, the
funnel sentences) were written in it then; a payload without one takes the
recipient's current language. A language nurture does not speak gives English.
Subjects and the names of event kinds live here, so that chat messages
(``webhooks.slack_message``) use the same words.

Written with the standard library's ``EmailMessage``: a handful of messages a
day, so its cost does not matter and its RFC 2047 / UTF-8 handling covers
Cyrillic names in subjects and bodies.
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
from .sequences import LANGUAGES
from .transports import SmtpTransport

TEMPLATES_DIR = PROJECT_ROOT / "templates" / "notifications"
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), undefined=jinja2.StrictUndefined,
                          autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
_env.filters["percent"] = lambda value: f"{(value or 0) * 100:.0f}%"
_env.filters["moment"] = lambda text: str(text)[:16].replace("T", " ")

SUBJECTS = {
    "en": {"warm_up": "Warm lead: {who}, {percent}", "reply": "Reply from {who}, {percent}",
           "rep_digest": "Your week {week}: {warm} warm, {stuck} stuck", "manager_digest": "Pipeline review {week}"},
    "ru": {"warm_up": "Тёплый лид: {who}, {percent}", "reply": "Ответ лида: {who}, {percent}",
           "rep_digest": "Ваша неделя {week}: тёплых лидов — {warm}, зависших — {stuck}",
           "manager_digest": "Обзор воронки, неделя {week}"},
}
EVENT_KINDS = {  # English shows the kind as it is stored
    "ru": {"open": "открытие письма", "click": "переход по ссылке", "reply": "ответ", "auto_reply": "автоответ",
           "bounce_hard": "письмо не доставлено", "bounce_soft": "временная ошибка доставки", "unsubscribe": "отписка",
           "complaint": "жалоба на спам"},
}


def mail_language(value: str | None) -> str:
    """The language of a team email: ``value`` when nurture speaks it, else English."""
    return value if value in LANGUAGES else "en"


def event_kind(kind: str, language: str) -> str:
    """An event kind ("click") in words of ``language``."""
    return EVENT_KINDS.get(language, {}).get(kind, kind)


_env.filters["event_kind"] = event_kind


def subject_for(template: str, payload: dict, language: str = "en") -> str:
    words = SUBJECTS[language]
    if template == "warm_up":
        lead = payload["lead"]
        who = lead["name"] + (f" ({lead['company']})" if lead["company"] else "")
        return words["reply" if payload.get("replied") else "warm_up"].format(
            who=who, percent=f"{lead['probability'] * 100:.0f}%")
    if template == "rep_digest":
        return words[template].format(week=payload["week"], warm=len(payload["warm"]), stuck=len(payload["stuck"]))
    if template == "manager_digest":
        return words[template].format(week=payload["week"])
    raise ValueError(f"no subject for notification template {template!r}")


def render(template: str, payload: dict, rep: User) -> tuple[str, str, str]:
    """(subject, text, html) of one team email, in the payload's language (else the rep's)."""
    language = mail_language(payload.get("language", rep.language))
    context = {**payload, "user": {"name": rep.name or rep.email, "email": rep.email}}
    return (subject_for(template, payload, language),
            _env.get_template(f"{template}.{language}.txt").render(context),
            _env.get_template(f"{template}.{language}.html").render(context))


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
