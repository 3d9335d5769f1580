"""A rep's pages: "my warm leads" by close probability with the reason, and my notifications.

Managers and admins can look at any rep's view with ``?rep=<id>``.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlmodel import select

from ..models import SENDABLE_LEAD_STATUSES, Lead, Notification, User
from ..notifications import why_lines
from ..pipeline import stored_pipeline
from .access import db_session, roles_required, settings

blueprint = Blueprint("reps", __name__, template_folder="../web_templates")
WARM_LIMIT = 100
NOTIFICATION_LIMIT = 200
CLOSED_STAGES_NOTE = "won, lost and archived leads are left out"


def _rep() -> User:
    """The rep whose pages these are: oneself, or ``?rep=`` for a manager or admin."""
    session = db_session()
    value = request.args.get("rep", "")
    if value and current_user.role in ("admin", "manager"):
        rep = session.get(User, int(value)) if value.isdigit() else None
        return rep or abort(404)
    return session.get(User, current_user.id)


@blueprint.get("/my/warm")
@roles_required("rep", "manager", "admin")
def warm():
    session = db_session()
    rep = _rep()
    closed = [s.key for s in stored_pipeline(session).stages if s.won or s.lost or s.terminal]
    leads = session.exec(select(Lead).where(Lead.owner_id == rep.id, Lead.status.in_(SENDABLE_LEAD_STATUSES),
                                            Lead.stage.not_in(closed))
                         .order_by(Lead.probability.desc(), Lead.id).limit(WARM_LIMIT)).all()
    reps = session.exec(select(User).where(User.role == "rep").order_by(User.name)).all()
    return render_template("admin/warm.html", rep=rep, leads=[(lead, why_lines(lead.probability_why, settings().clock.now())) for lead in leads],
                           reps=reps, note=CLOSED_STAGES_NOTE)


@blueprint.get("/my/notifications")
@roles_required("rep", "manager", "admin")
def notifications():
    session = db_session()
    rep = _rep()
    rows = session.exec(select(Notification).where(Notification.user_id == rep.id)
                        .order_by(Notification.created_at.desc(), Notification.id.desc()).limit(NOTIFICATION_LIMIT)).all()
    leads = {lead.id: lead for lead in session.exec(select(Lead).where(Lead.id.in_({n.lead_id for n in rows if n.lead_id})))}
    reps = session.exec(select(User).where(User.role == "rep").order_by(User.name)).all()
    return render_template("admin/notifications.html", rep=rep, rows=rows, leads=leads, reps=reps)


@blueprint.post("/my/notifications/<int:notification_id>/done")
@roles_required("rep", "manager", "admin")
def done(notification_id: int):
    session = db_session()
    row = session.get(Notification, notification_id)
    if row is None or (row.user_id != current_user.id and current_user.role not in ("admin", "manager")):
        abort(404)
    row.status, row.sent_at = "done", row.sent_at or settings().clock.now()
    session.add(row)
    session.commit()
    flash("Marked as done.", "success")
    return redirect(request.referrer if request.referrer and request.referrer.startswith(request.host_url)
                    else url_for("reps.notifications"))
