"""The manager's dashboard: funnel, conversion over time, bottleneck, forecast and plan.

Figures come from ``nurture.analytics`` and ``nurture.conversion`` (the same
functions as ``nurture funnel``, ``bottleneck``, ``forecast`` and ``plan``);
the page only lays them out. Charts are matplotlib SVGs from
``analytics.charts``, served as images (an ``<img>`` never runs script).
A plan made here is stored like one made with ``nurture plan``.
"""

from __future__ import annotations

from datetime import date, datetime, time, timezone

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ..analytics.backwards_plan import (
    average_deal_value, cycle_times, latest_plan, plan, progress, save_plan, step_conversions, won_between,
)
from ..analytics.bottleneck import bottleneck
from ..analytics.chain import AnalyticsError, Chain
from ..analytics.charts import conversion_chart, funnel_chart, render
from ..analytics.forecast import forecast
from ..analytics.funnel import funnel
from ..analytics.journeys import refresh
from ..conversion import stage_probabilities
from ..pipeline import stored_pipeline
from .access import READERS, db_session, roles_required, settings

blueprint = Blueprint("dashboard", __name__, template_folder="../web_templates")
MAX_DEALS = 1_000_000


def _context():
    session = db_session()
    config = stored_pipeline(session)
    refresh(session, config)
    session.commit()  # keeps what was folded into the per-lead summaries, and lets the next refresh go on
    return session, config, Chain.from_config(config), {s.key: s.name for s in config.stages}


@blueprint.get("/dashboard")
@roles_required(*READERS)
def index():
    return _page({}, {})


def _page(errors: dict[str, str], form) -> str:
    session, config, chain, names = _context()
    now = settings().clock.now()
    stored = latest_plan(session, now)
    result = funnel(session, chain)
    probabilities = stage_probabilities(session, config)
    return render_template(
        "admin/dashboard.html", names=names, funnel=result.rows[0] if result.rows else None,
        probabilities=[probabilities[s.key] for s in config.ordered if s.key in probabilities],
        bottleneck=_bottleneck(session, config, chain, now, stored),
        forecast=forecast(session, chain, now, average_deal_value(session, chain)),
        plan=stored, progress=progress(session, chain, stored, now) if stored else None,
        today=now.date(), errors=errors, form=form)


def _bottleneck(session, config, chain: Chain, now: datetime, stored):
    probabilities = stage_probabilities(session, config)
    return bottleneck(session, chain, {key: p.blended for key, p in probabilities.items()}, now, stored)


@blueprint.get("/dashboard/funnel.svg")
@roles_required(*READERS)
def funnel_svg():
    session, _, chain, names = _context()
    result = funnel(session, chain)
    if not result.rows:
        return Response(status=404)
    return Response(render(funnel_chart(result.rows[0], names), "svg"), mimetype="image/svg+xml")


@blueprint.get("/dashboard/conversion.svg")
@roles_required(*READERS)
def conversion_svg():
    session, config, chain, names = _context()
    now = settings().clock.now()
    stored = latest_plan(session, now)
    worst = _bottleneck(session, config, chain, now, stored).worst
    reference = {c["stage"]: c["rate"] for c in stored.result.get("conversions", [])} if stored else None
    result = funnel(session, chain, "month")
    if not result.rows:
        return Response(status=404)
    figure = conversion_chart(result, names, worst.stage if worst else None, reference)
    return Response(render(figure, "svg"), mimetype="image/svg+xml")


@blueprint.post("/dashboard/plan")
@roles_required("admin", "manager")
def make_plan():
    """A backwards plan: how many leads, per week and from when, to win N deals by a date."""
    session, config, chain, names = _context()
    now = settings().clock.now()
    errors: dict[str, str] = {}
    deals_text, date_text = request.form.get("deals", "").strip(), request.form.get("by_date", "").strip()
    confidence_text = request.form.get("confidence", "80").strip()
    deals = int(deals_text) if deals_text.isdigit() else 0
    if not 1 <= deals <= MAX_DEALS:
        errors["deals"] = f"a whole number from 1 to {MAX_DEALS:,}"
    try:
        by_date = date.fromisoformat(date_text)
        if by_date <= now.date():
            errors["by_date"] = "a date after today"
    except ValueError:
        errors["by_date"], by_date = "a date as YYYY-MM-DD", None
    try:
        confidence = float(confidence_text) / 100
        if not 0.5 <= confidence < 1:
            raise ValueError
    except ValueError:
        errors["confidence"], confidence = "a percentage from 50 to 99", 0.8
    if not errors:
        start = date(now.year, 3 * ((now.month - 1) // 3) + 1, 1)  # won deals count from the quarter's start
        conversions = step_conversions(stage_probabilities(session, config), chain, config.prior_weight)
        try:
            result = plan(conversions, deals, by_date, now.date(), confidence, {}, None,
                          average_deal_value(session, chain), cycle_times(session, chain),
                          won_so_far=won_between(session, chain, datetime.combine(start, time.min, timezone.utc), now))
        except (AnalyticsError, ValueError) as exc:
            errors["deals"] = str(exc)
        else:
            save_plan(session, result, {}, now, by_user_id=current_user.id)
            flash(f"Plan stored: {result.leads_at_confidence:,} new leads ({result.per_week_at_confidence:,} a week "
                  f"from {result.latest_start:%Y-%m-%d}) for {deals} deal(s) by {by_date:%Y-%m-%d}.", "success")
            return redirect(url_for("dashboard.index") + "#plan")
    flash("No plan made: fix the fields marked in red.", "error")
    return _page(errors, request.form), 400
