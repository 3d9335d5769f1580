"""Pages that show the mail the demo's catcher received (only when NURTURE_CATCHER_DIR is set)."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template

from .mail_catcher import caught_files, parse_caught

blueprint = Blueprint("caught", __name__)
NAME = re.compile(r"^\d+-\d+\.eml$")


def _directory() -> Path:
    return Path(current_app.config["NURTURE"].catcher_dir)


@blueprint.get("/")
@blueprint.get("/caught")
def index():
    files = caught_files(_directory())
    mails = [parse_caught(path) for path in files[:300]]
    return render_template("caught_index.html", mails=mails, total=len(files))


@blueprint.get("/caught/<name>")
def show(name: str):
    if not NAME.match(name) or not (_directory() / name).is_file():
        abort(404)
    return render_template("caught_show.html", mail=parse_caught(_directory() / name))
