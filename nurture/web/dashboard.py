"""The manager's dashboard: funnel, conversion over time, bottleneck, forecast and plan.

Figures come from ``nurture.analytics`` (the same functions as the CLI); the
page only lays them out.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, render_template
from sqlmodel import select

from ..models import Lead
from ..pipeline import stored_pipeline
from .access import READERS, db_session, roles_required

blueprint = Blueprint("dashboard", __name__, template_folder="../web_templates")


@blueprint.get("/dashboard")
@roles_required(*READERS)
def index():
    session = db_session()
    pipeline = stored_pipeline(session)
    counts = dict(session.exec(select(Lead.stage, sa.func.count()).group_by(Lead.stage)).all())
    stages = [(s.key, s.name, counts.get(s.key, 0), s.probability) for s in pipeline.ordered]
    return render_template("admin/dashboard.html", stages=stages, total=sum(counts.values()),
                           most=max(counts.values(), default=0))
