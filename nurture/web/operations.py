"""Operations: the suppression list, users (roles, the language of their emails), queue health, the caught-mail link.

Suppression goes through ``suppression.suppress`` / ``unsuppress`` (the same
path as unsubscribes and bounces). Queue health reads RQ's own registries for
the send queue: waiting, running, failed (with the last errors), scheduled,
and the workers that serve it.
"""

from __future__ import annotations

from babel import Locale
from email_validator import EmailNotValidError, validate_email
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from rq import Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
import sqlalchemy as sa
from sqlmodel import select

from ..addresses import normalise
from ..analytics.journeys import backlog
from ..models import ROLES, SUPPRESSION_REASONS, Suppression, User
from ..queues import send_queue
from ..sequences import LANGUAGES
from ..suppression import suppress, unsuppress
from .access import EDITORS, db_session, roles_required, settings
from .passwords import hash_password, password_problem

blueprint = Blueprint("operations", __name__, template_folder="../web_templates")
PER_PAGE = 100
REASON_OPTIONS = [(r, r.replace("_", " ")) for r in SUPPRESSION_REASONS]
ROLE_OPTIONS = [(r, r) for r in ROLES]
LANGUAGE_OPTIONS = [(code, Locale.parse(code).get_display_name(code).capitalize()) for code in LANGUAGES]  # "Русский"


@blueprint.get("/suppression")
@roles_required(*EDITORS)
def suppression():
    session = db_session()
    q = request.args.get("q", "").strip()[:320]
    statement = select(Suppression)
    if q:
        statement = statement.where(Suppression.email.contains(q.lower(), autoescape=True))
    total = session.exec(select(sa.func.count()).select_from(statement.subquery())).one()
    rows = session.exec(statement.order_by(Suppression.created_at.desc()).limit(PER_PAGE)).all()
    return render_template("admin/suppression.html", rows=rows, q=q, total=total, reason_options=REASON_OPTIONS,
                           errors={}, form={})


@blueprint.post("/suppression")
@roles_required(*EDITORS)
def suppression_add():
    session = db_session()
    email, reason, note = (request.form.get(k, "").strip() for k in ("email", "reason", "note"))
    errors = {}
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        errors["email"] = str(exc)
    if reason not in SUPPRESSION_REASONS:
        errors["reason"] = f"choose one of {', '.join(SUPPRESSION_REASONS)}"
    if len(note) > 500:
        errors["note"] = "at most 500 characters"
    if errors:
        rows = session.exec(select(Suppression).order_by(Suppression.created_at.desc()).limit(PER_PAGE)).all()
        total = session.exec(select(sa.func.count()).select_from(Suppression)).one()
        return render_template("admin/suppression.html", rows=rows, q="", total=total, reason_options=REASON_OPTIONS,
                               errors=errors, form=request.form), 400
    new = suppress(session, email, reason, settings().clock.now(), note or f"added by {current_user.email}")
    session.commit()
    flash(f"{normalise(email)} is suppressed; its sequences stopped." if new else f"{normalise(email)} was already suppressed.",
          "success")
    return redirect(url_for("operations.suppression"))


@blueprint.post("/suppression/remove")
@roles_required(*EDITORS)
def suppression_remove():
    session = db_session()
    email = request.form.get("email", "")
    if unsuppress(session, email, settings().clock.now()):
        session.commit()
        flash(f"{normalise(email)} removed from the list: it can be enrolled again (stopped sequences stay stopped).",
              "success")
    else:
        flash(f"{email} is not on the suppression list.", "error")
    return redirect(url_for("operations.suppression"))


@blueprint.get("/users")
@roles_required("admin")
def users():
    rows = db_session().exec(select(User).order_by(User.active.desc(), User.role, User.email)).all()
    editing = next((u for u in rows if str(u.id) == request.args.get("edit")), None)
    form = {"email": editing.email, "name": editing.name, "role": editing.role, "language": editing.language,
            "active": "on" if editing.active else ""} if editing else {}
    return render_template("admin/users.html", rows=rows, role_options=ROLE_OPTIONS, language_options=LANGUAGE_OPTIONS,
                           errors={}, form=form)


@blueprint.post("/users")
@roles_required("admin")
def users_save():
    """Create a user, or change one's role, email language, activity or password (by email)."""
    session = db_session()
    form = request.form
    errors: dict[str, str] = {}
    try:
        email = validate_email(form.get("email", "").strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        errors["email"], email = str(exc), ""
    role = form.get("role", "")
    if role not in ROLES:
        errors["role"] = f"choose one of {', '.join(ROLES)}"
    language = form.get("language")  # a form without the field keeps the user's
    if language is not None and language not in LANGUAGES:
        errors["language"] = f"nurture writes no emails in {language!r}: choose one of {', '.join(LANGUAGES)}"
    password = form.get("password", "")
    user = session.exec(select(User).where(User.email == email)).first() if email else None
    if password or user is None:
        problem = password_problem(password)
        if problem:
            errors["password"] = problem
    if user is not None and user.id == current_user.id and (role != "admin" or "active" not in form):
        errors["role"] = "you cannot take admin away from yourself or deactivate yourself"
    if errors:
        rows = session.exec(select(User).order_by(User.active.desc(), User.role, User.email)).all()
        return render_template("admin/users.html", rows=rows, role_options=ROLE_OPTIONS,
                               language_options=LANGUAGE_OPTIONS, errors=errors, form=form), 400
    created = user is None
    user = user or User(email=email, created_at=settings().clock.now())
    user.name = form.get("name", "").strip()[:200] or user.name or email.split("@")[0]
    user.role, user.active = role, "active" in form
    user.language = language or user.language
    if password:
        user.password_hash = hash_password(password)
    session.add(user)
    session.commit()
    flash(f"{'Created' if created else 'Updated'} {user.role} {user.email}.", "success")
    return redirect(url_for("operations.users"))


@blueprint.get("/queue")
@roles_required("admin")
def queue():
    queue = send_queue(settings(), current_app.extensions["nurture_redis"])
    failed = FailedJobRegistry(queue=queue)
    failures = []
    for job_id in failed.get_job_ids(0, 9):
        job = queue.fetch_job(job_id)
        if job is not None:
            result = job.latest_result()
            failures.append((job_id, job.ended_at, (result.exc_string or "").strip().splitlines()[-1:] if result else []))
    workers = Worker.all(queue=queue)
    figures = {"queued": queue.count, "running": StartedJobRegistry(queue=queue).count,
               "failed": failed.count, "scheduled": ScheduledJobRegistry(queue=queue).count,
               "finished (kept 1 h)": FinishedJobRegistry(queue=queue).count, "workers": len(workers)}
    pending, refreshed_at = backlog(db_session())
    return render_template("admin/queue.html", queue=queue, figures=figures, failures=failures, workers=workers,
                           caught=bool(settings().catcher_dir), report_backlog=pending, reports_refreshed_at=refreshed_at)


@blueprint.get("/caught")
@roles_required("admin", "marketer")
def caught():
    if not settings().catcher_dir:
        abort(404)
    return redirect(url_for("caught.index"))
