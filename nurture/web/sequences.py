"""Sequences: the list with live counts, the step builder, and activate / pause / archive.

Saving goes through ``loading.upsert_sequence``, the same code that loads
``campaigns/*.yaml``: steps keep their keys, edited steps apply to leads that
have not reached them, removed steps are retired (leads waiting on them move
on). The builder shows what a save will do to enrolled leads before and after.
"""

from __future__ import annotations

from collections import defaultdict

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlmodel import select

from ..loading import LoadReport, upsert_sequence
from ..models import SEQUENCE_STATUSES, STEP_KINDS, EmailTemplate, Enrollment, Message, Sequence, Step
from ..send_window import DAY_NAMES
from ..sequences import CONDITIONS
from .access import EDITORS, db_session, roles_required, settings
from .sequence_form import SequenceForm, check, describe_changes, kept_summary

blueprint = Blueprint("sequences", __name__, template_folder="../web_templates")
TRIGGERS = [("manual", "by hand (or the CLI)"), ("lost", "automatically when a lead is lost"),
            ("cold_return", "automatically when a cold lead comes back")]
STATUS_ACTIONS = {"activate": "active", "pause": "paused", "archive": "archived", "draft": "draft"}


@blueprint.get("/sequences")
@roles_required(*EDITORS, "manager")
def index():
    session = db_session()
    sequences = session.exec(select(Sequence).order_by(Sequence.status == "archived", Sequence.name)).all()
    enrollments: dict[int, dict[str, int]] = defaultdict(dict)
    for sequence_id, status, count in session.exec(
            select(Enrollment.sequence_id, Enrollment.status, sa.func.count()).group_by(Enrollment.sequence_id, Enrollment.status)):
        enrollments[sequence_id][status] = count
    messages: dict[int, dict[str, int]] = defaultdict(dict)
    for sequence_id, status, count in session.exec(
            select(Message.sequence_id, Message.status, sa.func.count()).group_by(Message.sequence_id, Message.status)):
        messages[sequence_id][status] = count
    steps = dict(session.exec(select(Step.sequence_id, sa.func.count()).where(Step.retired == False)  # noqa: E712
                              .group_by(Step.sequence_id)).all())
    return render_template("admin/sequences.html", sequences=sequences, enrollments=enrollments,
                           messages=messages, steps=steps)


@blueprint.route("/sequences/new", methods=["GET", "POST"])
@roles_required(*EDITORS)
def new():
    form = SequenceForm.from_request(request.form) if request.method == "POST" else SequenceForm()
    if request.method == "GET":
        form.apply("add")
    return _builder(None, form)


@blueprint.route("/sequences/<int:sequence_id>", methods=["GET", "POST"])
@roles_required(*EDITORS)
def edit(sequence_id: int):
    session = db_session()
    sequence = session.get(Sequence, sequence_id) or abort(404)
    if request.method == "POST":
        form = SequenceForm.from_request(request.form)
        form.key = sequence.key  # the key names the sequence everywhere: it does not change
    else:
        steps = session.exec(select(Step).where(Step.sequence_id == sequence.id, Step.retired == False)  # noqa: E712
                             .order_by(Step.position)).all()
        form = SequenceForm.from_sequence(sequence, steps)
    return _builder(sequence, form)


def _builder(sequence: Sequence | None, form: SequenceForm):
    session = db_session()
    template_names = set(session.exec(select(EmailTemplate.name)).all())
    errors: dict[str, str] = {}
    changes: list[str] = []
    action = request.form.get("action", "")
    if request.method == "POST" and not form.apply(action):
        status = sequence.status if sequence else "draft"
        spec, errors = check(form, status, template_names)
        if sequence is None and not errors and session.exec(select(Sequence.id).where(Sequence.key == form.key)).first():
            errors["key"] = f"a sequence with key {form.key!r} exists already"
        if spec is not None and not errors and action == "review":
            changes = describe_changes(session, sequence, spec) if sequence else []
            changes = changes or ["Nothing that changes anything for enrolled leads."]
        elif spec is not None and not errors:
            changes = describe_changes(session, sequence, spec) if sequence else []
            report = LoadReport()
            upsert_sequence(session, spec, settings().clock.now(), report)
            session.commit()
            saved = session.exec(select(Sequence).where(Sequence.key == spec.key)).one()
            flash("Saved." + ("" if report.sequences_added or report.sequences_updated else " Nothing had changed.")
                  + "".join(f"\n• {line}" for line in changes), "success")
            return redirect(url_for("sequences.edit", sequence_id=saved.id))
        else:
            flash("Not saved: fix the fields marked in red.", "error")
    active = 0
    if sequence is not None:
        active = session.exec(select(sa.func.count()).select_from(Enrollment).where(
            Enrollment.sequence_id == sequence.id, Enrollment.status == "active")).one()
    return render_template("admin/sequence_edit.html", sequence=sequence, form=form, errors=errors, changes=changes,
                           active_enrollments=active, days=DAY_NAMES,
                           kinds=[(k, k.replace("_", " ")) for k in STEP_KINDS],
                           conditions=[(c, c.replace("_", " ")) for c in CONDITIONS],
                           templates=[(t, t) for t in sorted(template_names)], kept_summary=kept_summary,
                           triggers=TRIGGERS), (400 if errors else 200)


@blueprint.post("/sequences/<int:sequence_id>/status")
@roles_required(*EDITORS)
def change_status(sequence_id: int):
    session = db_session()
    sequence = session.get(Sequence, sequence_id) or abort(404)
    status = STATUS_ACTIONS.get(request.form.get("action", ""))
    if status is None or status not in SEQUENCE_STATUSES:
        abort(400)
    sequence.status, sequence.updated_at = status, settings().clock.now()
    session.add(sequence)
    session.commit()
    explain = {"active": "due steps are sent from the next scheduler tick",
               "paused": "nothing is sent until it is activated again; enrolled leads keep their place",
               "archived": "nothing is sent and no one can be enrolled; history stays",
               "draft": "nothing is sent until it is activated"}[status]
    flash(f"{sequence.name} is now {status}: {explain}.", "success")
    return redirect(request.form.get("back") == "list" and url_for("sequences.index")
                    or url_for("sequences.edit", sequence_id=sequence.id))
