"""CLI for the manager's figures: ``nurture funnel|steps|bottleneck|plan|forecast``.

Each prints a readable table, or ``--json``; ``--csv FILE`` writes the flat rows
(UTF-8). The computations live in ``nurture.analytics``; this module only reads
options, opens the session and prints.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .analytics.chain import AnalyticsError, Chain, load_chain
from .analytics.journeys import refresh
from .analytics.report_sql import tune_for_reports

stdout = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)  # piped: wide, not wrapped
DATE = click.DateTime(formats=["%Y-%m-%d"])
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
now_option = click.option("--now", metavar="ISO-8601", help="Act as if it were this instant (default: NURTURE_NOW or the clock).")


@contextmanager
def _session(now: str | None):
    """The session of the configured database and the instant to answer as of."""
    from . import cli  # the shared helpers; imported late because cli registers this module

    settings = cli.settings_for(now)
    with cli.open_session(settings) as session:
        refresh(session)
        session.commit()  # keeps what was folded into the per-lead summaries, and lets the next refresh go on
        tune_for_reports(session)  # before nurture.conversion's queries too
        yield session, settings.clock.now()


def _percent(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _number(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def write_csv(path: str, rows: list[dict]) -> None:
    """The rows as CSV, the union of their keys as the header, in first-seen order."""
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    try:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    except OSError as exc:
        raise AnalyticsError(f"{path}: cannot write the CSV file: {exc.strerror}") from None
    click.echo(f"wrote {len(rows)} row(s) to {path}", err=True)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


# --- funnel -----------------------------------------------------------------------------------------

@click.command("funnel")
@click.option("--by", type=click.Choice(["week", "month"]), help="One row per entry cohort.")
@click.option("--sequence", "by_sequence", is_flag=True, help="Per sequence the leads were enrolled in.")
@click.option("--owner", "by_owner", is_flag=True, help="Per owning rep.")
@click.option("--source", "by_source", is_flag=True, help="Per lead source.")
@json_option
@click.option("--csv", "csv_path", metavar="FILE", help="Write one row per cohort x group x stage.")
@click.option("--chart", "chart_path", metavar="FILE.svg|FILE.png", help="Draw the funnel (all leads).")
@click.option("--trend-chart", "trend_path", metavar="FILE.svg|FILE.png",
              help="Draw each step's conversion per cohort (--by, default week), the bottleneck flagged.")
@now_option
def funnel_command(by, by_sequence, by_owner, by_source, as_json, csv_path, chart_path, trend_path, now) -> None:
    """Stage-to-stage conversion by entry cohort, drop-off and time in stage."""
    from .analytics.funnel import funnel

    group_by = tuple(d for d, on in (("sequence", by_sequence), ("owner", by_owner), ("source", by_source)) if on)
    with _session(now) as (session, moment):
        chain = load_chain(session)
        result = funnel(session, chain, by, group_by)
        if chart_path or trend_path:
            _charts(session, chain, result, chart_path, trend_path, by, moment)
    if csv_path:
        write_csv(csv_path, result.csv_rows())
    if as_json:
        _emit_json(result.as_dict())
        return
    if not result.rows:
        click.echo("no leads yet")
        return
    if len(result.rows) == 1 and not by and not group_by:
        _funnel_table(result, chain)
    else:
        _cohort_table(result, chain)
    _time_table(result, chain)


def _charts(session, chain: Chain, result, chart_path, trend_path, by, now: datetime) -> None:
    from .analytics.charts import conversion_chart, funnel_chart, save
    from .analytics.funnel import funnel

    if chart_path:
        overall = result if (not result.by and not result.group_by) else funnel(session, chain, stage_times=False)
        if not overall.rows:
            raise AnalyticsError("no leads yet: nothing to chart")
        save(funnel_chart(overall.rows[0], chain.names), Path(chart_path))
        click.echo(f"wrote the funnel chart to {chart_path}", err=True)
    if trend_path:
        trend = result if (result.by and not result.group_by) else funnel(session, chain, by or "week", stage_times=False)
        found, plan = _bottleneck(session, chain, now)
        reference = {c["stage"]: c["rate"] for c in plan.result.get("conversions", [])} if plan else None
        flagged = found.worst.stage if found.worst else None
        save(conversion_chart(trend, chain.names, flagged, reference), Path(trend_path))
        click.echo(f"wrote the conversion chart to {trend_path}", err=True)


def _funnel_table(result, chain: Chain) -> None:
    table = Table(title="Funnel")
    for column in ("stage", "reached", "→ next", "conversion", "dropped", "stalled"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for f in result.rows[0].stages:
        table.add_row(chain.names.get(f.stage, f.stage), f"{f.reached:,}", _number(f.advanced), _percent(f.conversion),
                      f"{f.dropped:,}", f"{f.stalled:,}")
    stdout.print(table)


def _cohort_table(result, chain: Chain) -> None:
    table = Table(title=f"Conversion by {' and '.join(([result.by] if result.by else []) + list(result.group_by))}")
    if result.by:
        table.add_column(f"{result.by} of entry")
    for dim in result.group_by:
        table.add_column(dim)
    table.add_column("leads", justify="right")
    for stage, following in chain.transitions():
        table.add_column(f"→{following}", justify="right")
    table.add_column("won", justify="right")
    for row in result.rows:
        cells = ([row.cohort] if result.by else []) + [row.group[d] for d in result.group_by]
        cells += [f"{row.leads:,}"] + [_percent(row.figures(s).conversion) for s, _ in chain.transitions()]
        table.add_row(*cells, f"{row.figures(chain.won).reached:,}")
    stdout.print(table)


def _time_table(result, chain: Chain) -> None:
    if not result.time_in_stage:
        return
    table = Table(title="Time in stage (completed stays, days)")
    for dim in result.group_by:
        table.add_column(dim)
    for column in ("stage", "stays", "median", "p90"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for t in result.time_in_stage:
        table.add_row(*[t.group[d] for d in result.group_by], chain.names.get(t.stage, t.stage), f"{t.stays:,}",
                      _number(t.median_days, 1), _number(t.p90_days, 1))
    stdout.print(table)


# --- steps ------------------------------------------------------------------------------------------

@click.command("steps")
@click.option("--sequence", "sequence_key", metavar="KEY", help="Only this sequence.")
@click.option("--metric", type=click.Choice(["open", "click", "reply"]), default="open", show_default=True,
              help="The rate the A/B verdict compares.")
@click.option("--promote", is_flag=True, help="Record the declared winners for new sends (NURTURE_AB_AUTO_PROMOTE).")
@json_option
@click.option("--csv", "csv_path", metavar="FILE", help="Write one row per step and variant.")
@now_option
def steps_command(sequence_key, metric, promote, as_json, csv_path, now) -> None:
    """Per step and variant: sent, delivered, human opens, clicks, replies, unsubscribes, bounces, complaints."""
    from .analytics.ab_winners import promote_winners
    from .analytics.step_performance import step_performance

    with _session(now) as (session, moment):
        result = step_performance(session, sequence_key, metric)
        promoted = promote_winners(session, result.verdicts, moment) if promote else None
    if csv_path:
        write_csv(csv_path, result.rows())
    if as_json:
        _emit_json({**result.as_dict(), **({"promoted": promoted} if promote else {})})
        return
    if not result.figures:
        click.echo("nothing sent yet" + (f" in {sequence_key}" if sequence_key else ""))
        return
    table = Table(title="Step performance (human events)")
    for column in ("sequence", "step", "var", "sent", "delivered", "opens", "clicks", "replies", "unsub", "bounced",
                   "complaints", "open %", "click %", "reply %", "unsub %", "bounce %"):
        table.add_column(column, justify="left" if column in ("sequence", "step") else "right")
    for row in result.rows():
        table.add_row(row["sequence"], row["step"], str(row["variant"]), f"{row['sent']:,}", f"{row['delivered']:,}",
                      f"{row['human_opens']:,}", f"{row['human_clicks']:,}", f"{row['replies']:,}",
                      f"{row['unsubscribes']:,}", f"{row['bounced']:,}", f"{row['complaints']:,}",
                      _percent(row["open_rate"]), _percent(row["click_rate"]), _percent(row["reply_rate"]),
                      _percent(row["unsubscribe_rate"]), _percent(row["bounce_rate"]))
    stdout.print(table)
    for v in result.verdicts:
        stdout.print(f"A/B {v.sequence} / {v.step}: {v.text}", highlight=False)
    if promote:
        click.echo(f"promoted winners for {len(promoted)} step(s)")


# --- bottleneck -------------------------------------------------------------------------------------

def _bottleneck(session, chain: Chain, now: datetime, window_days: int | None = None):
    from .analytics.backwards_plan import latest_plan
    from .analytics.bottleneck import WINDOW_DAYS, bottleneck
    from .conversion import stage_probabilities

    won_from = {key: p.blended for key, p in stage_probabilities(session).items()}
    plan = latest_plan(session, now)
    return bottleneck(session, chain, won_from, now, plan, window_days or WINDOW_DAYS), plan


@click.command("bottleneck")
@click.option("--window", "window_days", type=click.IntRange(7, 365), default=28, show_default=True,
              help="Days of recent moves to judge.")
@json_option
@now_option
def bottleneck_command(window_days, as_json, now) -> None:
    """The step furthest below plan (or its trailing average) and the deals a month it costs."""
    with _session(now) as (session, moment):
        chain = load_chain(session)
        result, _ = _bottleneck(session, chain, moment, window_days)
    if as_json:
        _emit_json(result.as_dict())
        return
    table = Table(title=f"Steps in the last {result.window_days} days against the {result.reference}")
    for column in ("step", "left", "advanced", "recent", result.reference, "gap", "deals/month lost"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for s in result.steps:
        mark = " ◀" if result.worst is s else ""
        table.add_row(f"{s.stage} → {s.next_stage}{mark}", f"{s.exits:,}", f"{s.advanced:,}", _percent(s.recent),
                      _percent(s.reference), "—" if s.gap is None else f"{s.gap * 100:+.1f} pts",
                      _number(s.deals_per_month, 1))
    stdout.print(table)
    stdout.print(result.sentence(), highlight=False)


# --- plan -------------------------------------------------------------------------------------------

def quarter_start(day: date) -> date:
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


@click.command("plan")
@click.option("--deals", type=int, required=True, help="Deals to win.")
@click.option("--revenue", type=float, help="Revenue to reach (needs deal values on won deals).")
@click.option("--by", "by_date", type=DATE, required=True, help="Target date, YYYY-MM-DD.")
@click.option("--confidence", type=float, default=0.8, show_default=True, help="Chance of reaching the target.")
@click.option("--what-if", "what_if", multiple=True, metavar="STAGE=+0.05",
              help="Raise (or lower) the conversion from STAGE to the next by points; repeatable.")
@click.option("--since", type=DATE, help="Count deals won from this date (default: the start of this quarter).")
@json_option
@now_option
def plan_command(deals, revenue, by_date, confidence, what_if, since, as_json, now) -> None:
    """How many new leads, per week and from when, to win DEALS by a date; the plan is stored."""
    from .analytics.backwards_plan import (
        average_deal_value, cycle_times, parse_what_if, plan, save_plan, step_conversions, won_between,
    )
    from .conversion import stage_probabilities
    from .pipeline import stored_pipeline

    changes = parse_what_if(what_if)
    with _session(now) as (session, moment):
        today = moment.date()
        start = since.date() if since else quarter_start(today)
        config = stored_pipeline(session)
        chain = Chain.from_config(config)
        conversions = step_conversions(stage_probabilities(session, config), chain, config.prior_weight)
        won = won_between(session, chain, datetime.combine(start, datetime.min.time(), timezone.utc), moment)
        result = plan(conversions, deals, by_date.date(), today, confidence, changes, revenue,
                      average_deal_value(session, chain), cycle_times(session, chain), won_so_far=won)
        stored = save_plan(session, result, changes, moment)
    if as_json:
        _emit_json({"plan_id": stored.id, **result.as_dict()})
        return
    _plan_report(result, stored.id, start, chain)


def _plan_report(result, plan_id: int, since: date, chain: Chain) -> None:
    out = stdout.print
    target = f"{result.deals} deal(s)" + (f" / {result.revenue:,.0f} revenue" if result.revenue else "")
    out(f"Plan #{plan_id}: {target} by {result.by_date.isoformat()}, {result.confidence:.0%} confidence", highlight=False)
    out(f"won since {since.isoformat()}: {result.won_so_far}; still needed: {result.remaining}", highlight=False)
    for note in result.notes:
        out(f"note: {note}", highlight=False)
    if result.reached:
        return
    table = Table(title="New leads needed")
    for column in ("", "mean plan", f"at {result.confidence:.0%}"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("in total", f"{result.leads_mean:,}", f"{result.leads_at_confidence:,}")
    table.add_row(f"per week ({result.weeks:.1f} weeks)", f"{result.per_week_mean:,}", f"{result.per_week_at_confidence:,}")
    out(table)
    volumes = Table(title="Leads reaching each stage")
    for column in ("stage", "conversion onward", "mean plan", f"at {result.confidence:.0%}"):
        volumes.add_column(column, justify="left" if column == "stage" else "right")
    rates = {c["stage"]: c["rate"] for c in result.conversions}
    for v in result.stage_volumes:
        volumes.add_row(chain.names.get(v.stage, v.stage), _percent(rates.get(v.stage)), _number(v.mean_plan),
                        _number(v.confident_plan))
    out(volumes)
    cycle = (f"{result.confidence:.0%} of won deals closed within {math.ceil(result.cycle_days)} days "
             f"({result.cycle_deals_measured} measured)" if result.cycle_days is not None else "no cycle time measured")
    out(f"leads must enter by {result.latest_start.isoformat()} ({cycle}); path conversion "
        f"{result.path_conversion:.2%}", highlight=False)


# --- forecast ---------------------------------------------------------------------------------------

@click.command("forecast")
@json_option
@click.option("--csv", "csv_path", metavar="FILE", help="Write one row per month and the total.")
@now_option
def forecast_command(as_json, csv_path, now) -> None:
    """Deals and revenue expected from the open leads, per expected close month, with 10/50/90 percentiles."""
    from .analytics.backwards_plan import average_deal_value
    from .analytics.forecast import forecast

    with _session(now) as (session, moment):
        chain = load_chain(session)
        rows = forecast(session, chain, moment, average_deal_value(session, chain))
    data = [r.as_dict() for r in rows]
    if csv_path:
        write_csv(csv_path, data)
    if as_json:
        _emit_json(data)
        return
    table = Table(title="Forecast from the open pipeline")
    for column in ("month", "open leads", "expected deals", "deals p10–p90", "expected revenue", "revenue p10–p90"):
        table.add_column(column, justify="left" if column == "month" else "right")
    for r in rows:
        revenue_range = "—" if r.revenue_p10 is None else f"{r.revenue_p10:,.0f} – {r.revenue_p90:,.0f}"
        table.add_row(r.month, f"{r.leads:,}", f"{r.expected_deals:,.1f}", f"{r.deals_p10:,} – {r.deals_p90:,}",
                      _number(r.expected_revenue), revenue_range)
    stdout.print(table)


commands = (funnel_command, steps_command, bottleneck_command, plan_command, forecast_command)
