"""CSV import pages: upload, a progress page that polls the RQ job, and the rejects download."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from ..queues import send_queue
from .access import EDITORS, roles_required, settings
from .import_job import rejects, start_import, status

blueprint = Blueprint("lead_imports", __name__, template_folder="../web_templates")
IMPORT_ID = re.compile(r"^[0-9a-f]{16}$")
TAG = re.compile(r"^[\w.-]{1,100}$")


@blueprint.route("/leads/import", methods=["GET", "POST"])
@roles_required(*EDITORS)
def new():
    errors: dict[str, str] = {}
    tags_text = request.form.get("tags", "").strip()
    if request.method == "POST":
        upload = request.files.get("file")
        data = upload.read() if upload else b""
        if not upload or not upload.filename:
            errors["file"] = "choose a CSV file"
        elif not data.strip():
            errors["file"] = f"{upload.filename} is empty"
        tags = [t.strip() for t in tags_text.split(",") if t.strip()]
        bad = [t for t in tags if not TAG.match(t)]
        if bad:
            errors["tags"] = f"not a tag: {', '.join(bad)} (letters, digits, - _ . only)"
        if not errors:
            queue = send_queue(settings(), current_app.extensions["nurture_redis"])
            import_id = start_import(queue, data, upload.filename, tags, current_user.id, settings().clock.now())
            return redirect(url_for("lead_imports.show", import_id=import_id))
    return render_template("admin/import.html", errors=errors, tags=tags_text), (400 if errors else 200)


def _state(import_id: str) -> dict:
    if not IMPORT_ID.match(import_id):
        abort(404)
    state = status(current_app.extensions["nurture_redis"], import_id)
    if state is None or (state["user_id"] != current_user.id and current_user.role != "admin"):
        abort(404)
    return state


@blueprint.get("/leads/import/<import_id>")
@roles_required(*EDITORS)
def show(import_id: str):
    return render_template("admin/import_progress.html", state=_state(import_id), import_id=import_id)


@blueprint.get("/leads/import/<import_id>/status")
@roles_required(*EDITORS)
def progress(import_id: str):
    state = _state(import_id)
    return jsonify({k: state.get(k) for k in ("state", "message", "done", "total", "created", "updated", "rejected")})


@blueprint.get("/leads/import/<import_id>/rejects.csv")
@roles_required(*EDITORS)
def rejects_report(import_id: str):
    state = _state(import_id)
    text = rejects(current_app.extensions["nurture_redis"], import_id)
    if text is None:
        abort(404)
    name = re.sub(r"[^\w.-]", "_", state.get("filename", "import"))
    return Response("\ufeff" + text, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="rejects-{name}"'})
