"""Unsubscribe pages: GET confirms, POST acts (RFC 8058 one-click included).

Mail scanners follow links, so GET never changes anything: it shows a page in
the lead's language with one button (and the choice to leave only this
sequence). A POST to the same signed URL unsubscribes at once, with or without
the ``List-Unsubscribe=One-Click`` body, and needs no login or session: the
signed token is the authority. A forged or tampered token answers 404 and
changes nothing. Unsubscribing suppresses the address and cancels everything
already queued for it.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request
from sqlmodel import Session

from .db import engine_for
from .models import Event, Lead, Message, Sequence
from .signing import verify
from .suppression import exit_enrollments, suppress
from .warmup import on_activity

blueprint = Blueprint("unsubscribe", __name__)

TEXTS = {
    "en": {"title": "Unsubscribe", "question": "Stop emails to {email}?", "all": "Unsubscribe from all emails",
           "sequence": "Only stop “{sequence}”", "done": "You are unsubscribed. {email} will get no more emails from us.",
           "done_sequence": "Done: no more emails from “{sequence}”."},
    "ru": {"title": "Отписка", "question": "Больше не присылать письма на {email}?", "all": "Отписаться от всех писем",
           "sequence": "Отписаться только от «{sequence}»", "done": "Готово: на адрес {email} больше не придёт ни одного письма.",
           "done_sequence": "Готово: писем из рассылки «{sequence}» больше не будет."},
}


def _load(token: str):
    settings = current_app.config["NURTURE"]
    message_id = verify(settings.secret_key, "unsubscribe", token)
    if message_id is None:
        abort(404)
    session = Session(engine_for(settings.database_url), expire_on_commit=False)
    message = session.get(Message, message_id)
    if message is None:
        session.close()
        abort(404)
    lead = session.get(Lead, message.lead_id)
    sequence = session.get(Sequence, message.sequence_id)
    return settings, session, message, lead, sequence


@blueprint.get("/u/<token>")
def confirm(token: str):
    settings, session, message, lead, sequence = _load(token)
    session.close()
    texts = TEXTS.get(lead.language, TEXTS["en"])
    return render_template("unsubscribe.html", texts=texts, lead=lead, sequence=sequence, token=token, done=None)


@blueprint.post("/u/<token>")
def unsubscribe(token: str):
    settings, session, message, lead, sequence = _load(token)
    texts = TEXTS.get(lead.language, TEXTS["en"])
    now = settings.clock.now()
    with session:
        only_sequence = request.form.get("scope") == "sequence"
        session.add(Event(lead_id=lead.id, message_id=message.id, kind="unsubscribe", occurred_at=now,
                          data={"scope": "sequence" if only_sequence else "all",
                                "one_click": request.form.get("List-Unsubscribe") == "One-Click"}))
        if only_sequence:
            exit_enrollments(session, [message.enrollment_id], "unsubscribed from this sequence", now)
            done = texts["done_sequence"].format(sequence=sequence.name)
        else:
            suppress(session, lead.email, "unsubscribed", now, note=f"link in message {message.id}")
            done = texts["done"].format(email=lead.email)
        on_activity(session, settings, [lead.id], now)  # no longer warm: its probability drops now
        session.commit()
    return render_template("unsubscribe.html", texts=texts, lead=lead, sequence=sequence, token=token, done=done)
