"""``POST /inbound/raw``: providers' inbound routes deliver a raw MIME message here.

Authenticated by ``NURTURE_INBOUND_SECRET``, given as ``Authorization: Bearer
SECRET`` or ``X-Nurture-Secret``; compared in constant time. The body is the
message itself (any content type), or a form field ``message``. The answer is
the pipeline's verdict as JSON; the same pipeline serves IMAP.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, abort, current_app, jsonify, request
from sqlmodel import Session

from .db import engine_for
from .inbound import process_raw

blueprint = Blueprint("inbound", __name__)
MAX_BYTES = 40 * 1024 * 1024


@blueprint.post("/inbound/raw")
def inbound_raw():
    settings = current_app.config["NURTURE"]
    if not settings.inbound_secret:
        abort(404)
    given = request.headers.get("X-Nurture-Secret") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), settings.inbound_secret.encode()):
        return jsonify(error="missing or wrong inbound secret"), 401
    if (request.content_length or 0) > MAX_BYTES:
        return jsonify(error=f"message larger than {MAX_BYTES} bytes"), 413
    raw = request.form.get("message", "").encode() if request.form.get("message") else request.get_data()
    if not raw.strip():
        return jsonify(error="empty body: send the raw MIME message"), 400
    with Session(engine_for(settings.database_url), expire_on_commit=False) as session:
        result = process_raw(session, settings, raw, "webhook", settings.clock.now())
    return jsonify(kind=result.kind, duplicate=result.duplicate, lead=result.lead, message_id=result.message_id,
                   matched_by=result.matched_by, actions=result.actions, reasons=result.reasons)
