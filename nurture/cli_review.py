"""CLI: ``nurture review weekly`` and ``nurture notifications list|retry``."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from sqlmodel import select

from .models import Lead, Notification, User


def _cli():
    from . import cli  # the shared helpers (settings, session, error handling) live there

    return cli


@click.group("review", cls=_cli().NurtureGroup)
def review() -> None:
    """The weekly status review."""


@review.command("weekly")
@_cli().now_option
@click.option("--dry-run", is_flag=True, help="Show what the review would do and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def review_weekly(now, dry_run, as_json) -> None:
    """Cool stale leads, flag stuck ones and send this week's digests (once per week)."""
    from .weekly_review import run_weekly_review

    cli = _cli()
    settings = cli.settings_for(now)
    with cli.open_session(settings) as session:
        report = run_weekly_review(session, settings, settings.clock.now(), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2, default=str))
        return
    would = "would be " if dry_run else ""
    moved = [c for c in report.cooled if c["moved"]]
    click.echo(f"weekly review {report.week}{' (dry run: nothing changed)' if dry_run else ''}")
    click.echo(f"cooled: {len(moved)} {would}moved to cold" + (f", {len(report.cooled) - len(moved)} left where a rep put them"
                                                                if len(moved) < len(report.cooled) else ""))
    for c in report.cooled:
        click.echo(f"  {c['email']}: {c['from_stage']} -> {c['to_stage']}: {c['reason']}")
    click.echo(f"stuck: {len(report.stuck)} ({report.flagged} {would}newly flagged)")
    for s in report.stuck:
        click.echo(f"  {s.email}: {s.days:g} days in {s.stage} (limit {s.limit_days:g}, {s.limit_from})")
    for d in report.digests:
        click.echo(f"digest to {d['to']} ({d['role']}): {'would be sent' if dry_run and d['status'] == 'sent' else d['status']}")


@click.group("notifications", cls=_cli().NurtureGroup)
def notifications() -> None:
    """Notices to reps: warm leads, stuck leads, digests."""


@notifications.command("list")
@click.option("--status", type=click.Choice(["open", "pending", "sent", "failed", "done"]))
@click.option("--kind", type=click.Choice(["rep_task", "warm_up", "stuck", "digest"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def notifications_list(status, kind, limit, as_json) -> None:
    """The latest notifications, newest first, with delivery attempts and errors."""
    cli = _cli()
    settings = cli.settings_for()
    with cli.open_session(settings) as session:
        query = (select(Notification, User.email, Lead.email).outerjoin(User, User.id == Notification.user_id)
                 .outerjoin(Lead, Lead.id == Notification.lead_id).order_by(Notification.id.desc()).limit(limit))
        if status:
            query = query.where(Notification.status == status)
        if kind:
            query = query.where(Notification.kind == kind)
        rows = [{"id": n.id, "kind": n.kind, "channel": n.channel, "status": n.status, "to": user, "lead": lead,
                 "reason": n.reason, "attempts": n.attempts, "error": n.error.strip(), "created_at": n.created_at,
                 "sent_at": n.sent_at} for n, user, lead in session.exec(query).all()]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2, default=str))
        return
    table = Table("id", "kind", "channel", "status", "to", "lead", "reason", "tries", "last error")
    for r in rows:
        table.add_row(str(r["id"]), r["kind"], r["channel"], r["status"], r["to"] or "", r["lead"] or "", r["reason"],
                      str(r["attempts"]), r["error"].splitlines()[-1] if r["error"] else "")
    Console(width=200).print(table)


@notifications.command("retry")
@_cli().now_option
def notifications_retry(now) -> None:
    """Deliver again every failed notification, and pending ones whose job was lost."""
    from .notifications import requeue_pending

    cli = _cli()
    settings = cli.settings_for(now)
    with cli.open_session(settings) as session:
        enqueued = requeue_pending(session, settings, settings.clock.now(), include_failed=True)
    click.echo(f"enqueued {enqueued} delivery job(s)")
