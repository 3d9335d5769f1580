"""Email templates: list, editor with save-time checks, live preview, test send to yourself.

A save compiles the template with ``rendering.compile_source`` (unknown MJML
tags, unclosed tags, Jinja errors, unknown variables, with the line) and
stores it through ``loading.upsert_template``, so its version grows as when
files are loaded. The preview renders for a chosen lead in a sandboxed iframe;
the test send goes to the logged-in user through the configured SMTP server.
"""

from __future__ import annotations

import re

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user
from sqlmodel import select

from ..errors import NurtureError
from ..loading import LoadReport, upsert_template
from ..models import EmailTemplate, Lead, Step, User
from ..sequences import LANGUAGES
from ..transports import SmtpTransport
from .access import EDITORS, db_session, lead_scope, roles_required, settings
from .template_preview import SourceProblem, check_source, render_for, test_message

blueprint = Blueprint("email_templates", __name__, template_folder="../web_templates")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
STARTER = """<mjml>
  <mj-body width="600px">
    <mj-section>
      <mj-column>
        <mj-text>Hello {{ lead.first_name }},</mj-text>
        <mj-text>…</mj-text>
        <mj-text>{{ rep.name }}</mj-text>
      </mj-column>
    </mj-section>
    <mj-include path="_footer.en.mjml" />
  </mj-body>
</mjml>
"""


@blueprint.get("/templates")
@roles_required(*EDITORS)
def index():
    session = db_session()
    templates = session.exec(select(EmailTemplate).order_by(EmailTemplate.name, EmailTemplate.language)).all()
    used: dict[str, int] = {}
    for name in session.exec(select(Step.template).where(Step.retired == False)):  # noqa: E712
        used[name] = used.get(name, 0) + 1
    return render_template("admin/templates.html", templates=templates, used=used)


@blueprint.route("/templates/new", methods=["GET", "POST"])
@roles_required(*EDITORS)
def new():
    session = db_session()
    errors: dict[str, str] = {}
    name = request.form.get("name", "").strip()
    language = request.form.get("language", settings().default_language)
    if request.method == "POST":
        if not NAME.match(name):
            errors["name"] = "use a-z, 0-9, - and _ (start with a letter or digit)"
        if language not in LANGUAGES:
            errors["language"] = f"choose one of {', '.join(LANGUAGES)}"
        if not errors and session.exec(select(EmailTemplate.id).where(
                EmailTemplate.name == name, EmailTemplate.language == language)).first():
            errors["name"] = f"{name}.{language} exists already"
        if not errors:
            return _save(None, name, language)
    return render_template("admin/template_edit.html", template=None, name=name, language=language,
                           languages=LANGUAGES, subjects="Hello {{ lead.first_name }}",
                           mjml=STARTER.replace("_footer.en", f"_footer.{language}"), errors=errors,
                           problem=None, leads=_sample_leads()), (400 if errors else 200)


@blueprint.route("/templates/<int:template_id>", methods=["GET", "POST"])
@roles_required(*EDITORS)
def edit(template_id: int):
    template = db_session().get(EmailTemplate, template_id) or abort(404)
    if request.method == "POST":
        return _save(template, template.name, template.language)
    return render_template("admin/template_edit.html", template=template, name=template.name,
                           language=template.language, languages=LANGUAGES, subjects="\n".join(template.subjects),
                           mjml=template.mjml, errors={}, problem=None, leads=_sample_leads())


def _save(template: EmailTemplate | None, name: str, language: str):
    session = db_session()
    subjects, mjml = request.form.get("subjects", ""), request.form.get("mjml", "")
    compiled = check_source(settings(), name, language, subjects, mjml)
    if isinstance(compiled, SourceProblem):
        flash("Not saved: the template has an error (shown next to the field).", "error")
        return render_template("admin/template_edit.html", template=template, name=name, language=language,
                               languages=LANGUAGES, subjects=subjects, mjml=mjml,
                               errors={compiled.field: compiled.message}, problem=compiled,
                               leads=_sample_leads()), 400
    report = LoadReport()
    upsert_template(session, compiled, settings().clock.now(), report)
    session.commit()
    saved = session.exec(select(EmailTemplate).where(EmailTemplate.name == name, EmailTemplate.language == language)).one()
    flash(f"Saved {name}.{language} (version {saved.version})." if report.templates_added or report.templates_updated
          else "Nothing had changed.", "success")
    return redirect(url_for("email_templates.edit", template_id=saved.id))


@blueprint.post("/templates/preview")
@roles_required(*EDITORS)
def preview():
    """JSON for the live preview: the unsaved source rendered for the chosen lead, or the error and its line."""
    name = request.form.get("name", "") if NAME.match(request.form.get("name", "")) else "preview"
    language = request.form.get("language", "en") if request.form.get("language") in LANGUAGES else "en"
    compiled = check_source(settings(), name, language, request.form.get("subjects", ""), request.form.get("mjml", ""))
    if isinstance(compiled, SourceProblem):
        return jsonify(error=compiled.message, field=compiled.field, line=compiled.line)
    lead = _chosen_lead()
    owner = db_session().get(User, lead.owner_id) if lead and lead.owner_id else None
    rendered = render_for(settings(), compiled, lead, owner)
    return jsonify(subject=rendered.subject, html=rendered.html, text=rendered.text)


@blueprint.post("/templates/<int:template_id>/test")
@roles_required(*EDITORS)
def test_send(template_id: int):
    session = db_session()
    template = session.get(EmailTemplate, template_id) or abort(404)
    lead = _chosen_lead()
    owner = session.get(User, lead.owner_id) if lead and lead.owner_id else None
    rendered = render_for(settings(), template, lead, owner)
    data = test_message(settings(), rendered, current_user.name, current_user.email, settings().clock.now())
    try:
        with SmtpTransport(settings().smtp) as transport:
            answer = transport.send(settings().from_address, current_user.email, data)
    except NurtureError as exc:
        flash(f"Test send failed: {exc}", "error")
    else:
        flash(f"Test sent to {current_user.email} ({answer}).", "success")
    return redirect(url_for("email_templates.edit", template_id=template.id))


def _chosen_lead() -> Lead | None:
    value = request.form.get("lead_id", "")
    if not value.isdigit():
        return None
    lead = db_session().get(Lead, int(value))
    return lead if lead is not None else abort(404)


def _sample_leads() -> list[Lead]:
    return list(db_session().exec(lead_scope(select(Lead)).order_by(Lead.id.desc()).limit(30)).all())
