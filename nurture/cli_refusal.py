"""CLI for the follow-up after a refusal: the won-back flow, and settling the silent.

``nurture refusal stats [--since DATE] [--json]`` shows, per lost reason, how many
leads were lost, came back to an active stage and were won later (and the value
won back). ``nurture refusal settle [--now T]`` archives or hands to the re-offer the
leads that stayed silent after the last letter (the scheduler does this too).
Registered in ``cli.py``.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from .cli import NurtureGroup, now_option, open_session, settings_for
from .clock import parse_instant


@click.group("refusal", cls=NurtureGroup)
def refusal_group() -> None:
    """Lost deals followed up on a plan: outcomes and the won-back flow."""


@refusal_group.command("stats")
@click.option("--since", metavar="DATE", help="Count leads lost from this day or instant on (ISO-8601).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def refusal_stats(since, as_json) -> None:
    """Per lost reason: lost, back in an active stage later, won later, value won back."""
    from .refusal import won_back_counts

    settings = settings_for()
    with open_session(settings) as session:
        flows = won_back_counts(session, parse_instant(since, "--since") if since else None)
    if as_json:
        click.echo(json.dumps([flow.as_dict() for flow in flows], ensure_ascii=False))
        return
    table = Table(title="Won back after refusal")
    for column in ("reason", "label", "lost", "returned", "won", "won %", "value won"):
        table.add_column(column, justify="left" if column in ("reason", "label") else "right")
    for flow in flows:
        table.add_row(flow.reason, flow.label.get("en", ""), str(flow.lost), str(flow.returned), str(flow.won),
                      f"{flow.won_rate:.0%}", f"{flow.won_value:,.0f}")
    total_lost, total_won = sum(f.lost for f in flows), sum(f.won for f in flows)
    table.add_row("all", "", str(total_lost), str(sum(f.returned for f in flows)), str(total_won),
                  f"{total_won / total_lost:.0%}" if total_lost else "0%", f"{sum(f.won_value for f in flows):,.0f}")
    Console().print(table)


@refusal_group.command("settle")
@now_option
def refusal_settle(now) -> None:
    """Archive or hand to the re-offer (NURTURE_REFUSAL_AFTER) the leads silent after the last letter."""
    from .refusal import settle_silent

    settings = settings_for(now)
    settled = 0
    with open_session(settings) as session:
        while lines := settle_silent(session, settings, settings.clock.now()):
            session.commit()
            settled += len(lines)
            for line in lines:
                click.echo(line)
    click.echo(f"settled: {settled}")
