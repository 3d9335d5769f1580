"""Open pixel and click redirect endpoints.

They answer without touching the database: a valid hit is published to the
Redis stream (``event_stream.record``) and the drainer stores it. The pixel is
returned whatever happens (even when recording fails: that is logged), with
headers that forbid caching so every open reaches us. A click whose token does
not verify for that exact URL answers 404 and records nothing; a valid one
redirects to that URL only.
"""

from __future__ import annotations

import base64
import logging

from flask import Blueprint, Response, abort, current_app, redirect, request

from .event_stream import record, stream_key
from .reactions import on_tracking_events
from .tracking import TRAP_URL, verify_click, verify_open

log = logging.getLogger(__name__)
blueprint = Blueprint("tracking", __name__)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache", "Expires": "0"}


def _hit(kind: str, message_id: int, url: str = "") -> dict[str, str]:
    settings = current_app.config["NURTURE"]
    return {"kind": kind, "message_id": str(message_id), "url": url, "at": settings.clock.now().isoformat(),
            "method": request.method, "ua": request.headers.get("User-Agent", "")[:500],
            "ip": request.remote_addr or ""}  # the client's behind NURTURE_PROXY_HOPS proxies


def _record(hit: dict[str, str]) -> None:
    """Record a hit; never fails the response (the reader must get the pixel or the page)."""
    settings = current_app.config["NURTURE"]
    try:
        record(current_app.extensions.get("nurture_redis"), stream_key(settings.queue_name), settings.database_url, hit,
               on_events=lambda session, events: on_tracking_events(session, events, settings.clock.now(), settings))
    except Exception:
        log.exception("could not record a %s of message %s", hit["kind"], hit["message_id"])


@blueprint.route("/o/<token>.gif", methods=["GET", "HEAD"])
def pixel(token: str):
    message_id = verify_open(current_app.config["NURTURE"].secret_key, token)
    if message_id is not None:
        _record(_hit("open", message_id))
    return Response(PIXEL, mimetype="image/gif", headers=NO_CACHE)


@blueprint.route("/c/<token>", methods=["GET", "HEAD"])
def click(token: str):
    url = request.args.get("u", "")
    message_id = verify_click(current_app.config["NURTURE"].secret_key, token, url) if url else None
    if message_id is None:
        abort(404)
    _record(_hit("click", message_id, url))
    if url == TRAP_URL:
        return Response("", status=204, headers=NO_CACHE)
    response = redirect(url, code=302)
    response.headers.update(NO_CACHE)
    return response
