"""Leads: the searchable list, a lead's page (timeline, probability and why) and what can be done there.

Reps see and act on their own leads only (``access.lead_for_user``). Stage
moves go through ``stages.move_stage`` (a lost stage needs a lost reason),
suppression through ``suppression.suppress``, enrollment through
``enrollment.enroll``, leaving a sequence through ``suppression.exit_enrollments``.
"""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlmodel import select

from ..enrollment import LeadFilter, enroll
from ..errors import NurtureError
from ..lead_view import lead_document
from ..models import LEAD_STATUSES, Enrollment, LeadTag, Note, Sequence, User
from ..notifications import why_lines
from ..pipeline import stored_pipeline
from ..probability import rescore
from ..stages import move_stage
from ..suppression import exit_enrollments, suppress
from .access import EDITORS, db_session, lead_for_user, lead_scope, roles_required, settings
from .lead_search import PER_PAGE, LeadQuery, matching_ids, search
from .lead_timeline import timeline

blueprint = Blueprint("leads", __name__, template_folder="../web_templates")
ANYONE = ("admin", "marketer", "manager", "rep")
MAX_NOTE = 5000
MAX_SEGMENT = 50_000  # leads enrolled by one click; more is a job for `nurture enroll`
ENROLL_CHUNK = 5_000


@blueprint.get("/leads")
@roles_required(*ANYONE)
def index():
    session = db_session()
    query, errors = LeadQuery.from_args(request.args)
    if current_user.role == "rep":
        query.owner = ""  # a rep's list is theirs already
    leads, total = search(session, query, lead_scope)
    owners = dict(session.exec(select(User.id, User.name)).all())
    return render_template("admin/leads.html", leads=leads, total=total, query=query, errors=errors,
                           pages=max(1, -(-total // PER_PAGE)), owners=owners, filters=_filter_options(),
                           can_enroll=current_user.can(*EDITORS), max_segment=MAX_SEGMENT)


@blueprint.post("/leads/enroll")
@roles_required(*EDITORS)
def enroll_segment():
    """Enroll every lead the list's filters match (the query string) in the chosen sequence."""
    session = db_session()
    query, errors = LeadQuery.from_args(request.args)
    back = url_for("leads.index") + (f"?{query.args()}" if query.args() else "")
    sequence = _chosen(Sequence, "sequence_id")
    if errors or sequence is None:
        flash("Not enrolled: " + ("; ".join(f"{k}: {v}" for k, v in errors.items()) or "choose a sequence."), "error")
        return redirect(back)
    ids = matching_ids(session, query, MAX_SEGMENT)
    if len(ids) > MAX_SEGMENT:
        flash(f"Not enrolled: more than {MAX_SEGMENT:,} leads match; narrow the filters or use `nurture enroll`.", "error")
        return redirect(back)
    enrolled, refused = 0, {}
    try:
        for start in range(0, len(ids), ENROLL_CHUNK):
            report = enroll(session, settings(), sequence.key, LeadFilter(lead_ids=ids[start:start + ENROLL_CHUNK]),
                            settings().clock.now())
            enrolled += report.enrolled
            for reason, emails in report.refused.items():
                refused[reason] = refused.get(reason, 0) + len(emails)
    except NurtureError as exc:
        session.rollback()
        flash(f"Not enrolled: {exc}", "error")
        return redirect(back)
    details = "".join(f"\n• not enrolled, {reason}: {count:,}" for reason, count in refused.items())
    flash(f"Enrolled {enrolled:,} of {len(ids):,} matching leads in {sequence.name}." + details,
          "success" if enrolled else "error")
    return redirect(back)


def _filter_options() -> dict:
    session = db_session()
    pipeline = stored_pipeline(session)
    return {
        "stages": [(s.key, s.name) for s in pipeline.ordered],
        "statuses": [(s, s) for s in LEAD_STATUSES],
        "owners": [("none", "— nobody —")] + [(str(i), n or e) for i, n, e in session.exec(
            select(User.id, User.name, User.email).where(User.role == "rep").order_by(User.name))],
        "sequences": [(str(i), n) for i, n in session.exec(select(Sequence.id, Sequence.name).order_by(Sequence.name))],
        "tags": [(t, t) for t in session.exec(select(LeadTag.tag).distinct().order_by(LeadTag.tag).limit(200))],
    }


def _chosen(model, field: str):
    """The row whose id the form's ``field`` holds, or None."""
    value = request.form.get(field, "")
    return db_session().get(model, int(value)) if value.isdigit() else None


@blueprint.get("/leads/<int:lead_id>")
@roles_required(*ANYONE)
def show(lead_id: int):
    session = db_session()
    lead = lead_for_user(lead_id)
    document = lead_document(session, lead.email)
    pipeline = stored_pipeline(session)
    owner = session.get(User, lead.owner_id) if lead.owner_id else None
    running = [e for e in session.exec(select(Enrollment).where(Enrollment.lead_id == lead.id,
                                                               Enrollment.status.in_(("active", "paused"))))]
    sequences = dict(session.exec(select(Sequence.id, Sequence.name)).all())
    open_sequences = [(str(s.id), s.name) for s in session.exec(
        select(Sequence).where(Sequence.status != "archived").order_by(Sequence.name))]
    return render_template(
        "admin/lead.html", lead=lead, document=document, owner=owner, entries=timeline(session, document, lead.id),
        stages=[(s.key, s.name) for s in pipeline.ordered], lost_stages=[s.key for s in pipeline.stages if s.lost],
        lost_reasons=[(r.key, r.label.en) for r in pipeline.lost_reasons], running=running, sequences=sequences,
        open_sequences=open_sequences, why=why_lines(lead.probability_why, settings().clock.now()), errors={},
        can_edit_enrollment=current_user.can(*EDITORS))


@blueprint.post("/leads/<int:lead_id>/stage")
@roles_required(*ANYONE)
def change_stage(lead_id: int):
    session = db_session()
    lead = lead_for_user(lead_id)
    value = request.form.get("deal_value", "").strip().replace(",", ".")
    try:
        deal_value = float(value) if value else None
        if deal_value is not None and deal_value < 0:
            raise ValueError("a deal value cannot be negative")
        change = move_stage(session, lead, request.form.get("stage", ""), source="manual", now=settings().clock.now(),
                            note=request.form.get("note", "").strip(), by_user_id=current_user.id,
                            lost_reason=request.form.get("lost_reason", ""), deal_value=deal_value)
        if change:
            rescore(session, settings(), [lead.id], change.changed_at)  # the new stage's probability, at once
    except ValueError as exc:
        session.rollback()
        message = str(exc) if "could not convert" not in str(exc) else f"deal value {value!r} is not a number"
        flash(f"Stage not changed: {message}", "error")
        return redirect(url_for("leads.show", lead_id=lead_id) + "#stage")
    session.commit()
    flash(f"Stage is now {change.to_stage}." if change else "The lead is already at that stage.", "success")
    return redirect(url_for("leads.show", lead_id=lead_id))


@blueprint.post("/leads/<int:lead_id>/notes")
@roles_required(*ANYONE)
def add_note(lead_id: int):
    session = db_session()
    lead = lead_for_user(lead_id)
    body = request.form.get("body", "").strip()
    if not body or len(body) > MAX_NOTE:
        flash(f"Note not added: write between 1 and {MAX_NOTE} characters.", "error")
        return redirect(url_for("leads.show", lead_id=lead_id) + "#notes")
    session.add(Note(lead_id=lead.id, user_id=current_user.id, body=body, created_at=settings().clock.now()))
    session.commit()
    flash("Note added.", "success")
    return redirect(url_for("leads.show", lead_id=lead_id))


@blueprint.post("/leads/<int:lead_id>/enroll")
@roles_required(*EDITORS)
def enroll_lead(lead_id: int):
    session = db_session()
    lead = lead_for_user(lead_id)
    sequence = _chosen(Sequence, "sequence_id")
    if sequence is None:
        flash("Not enrolled: choose a sequence.", "error")
        return redirect(url_for("leads.show", lead_id=lead_id))
    try:
        report = enroll(session, settings(), sequence.key, LeadFilter(lead_ids=[lead.id]), settings().clock.now())
    except NurtureError as exc:
        session.rollback()
        flash(f"Not enrolled: {exc}", "error")
    else:
        if report.enrolled:
            flash(f"Enrolled in {sequence.name}.", "success")
        else:
            flash(f"Not enrolled: {', '.join(report.refused)}.", "error")
    return redirect(url_for("leads.show", lead_id=lead_id))


@blueprint.post("/leads/<int:lead_id>/unenroll")
@roles_required(*EDITORS)
def unenroll(lead_id: int):
    session = db_session()
    lead = lead_for_user(lead_id)
    enrollment = _chosen(Enrollment, "enrollment_id")
    if enrollment is None or enrollment.lead_id != lead.id:
        abort(404)
    exited = exit_enrollments(session, [enrollment.id], f"unenrolled by {current_user.email}", settings().clock.now())
    session.commit()
    flash("Removed from the sequence; its queued messages are cancelled." if exited else "It had already stopped.",
          "success")
    return redirect(url_for("leads.show", lead_id=lead_id))


@blueprint.post("/leads/<int:lead_id>/suppress")
@roles_required(*EDITORS)
def suppress_lead(lead_id: int):
    session = db_session()
    lead = lead_for_user(lead_id)
    note = request.form.get("note", "").strip() or f"by {current_user.email} from the lead page"
    new = suppress(session, lead.email, "manual", settings().clock.now(), note)
    session.commit()
    flash("Suppressed: nothing will be sent to this address; its sequences stopped." if new
          else "It was already suppressed.", "success")
    return redirect(url_for("leads.show", lead_id=lead_id))

