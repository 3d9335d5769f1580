"""CLI for the close-probability model: ``nurture model fit|evaluate``, ``nurture leads rescore|why``."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table
from sqlmodel import select

from .addresses import normalise
from .errors import NurtureError
from .models import Lead


def _cli():
    from . import cli  # the shared helpers; imported late because cli registers this module

    return cli


@click.group("model")
def model_group() -> None:
    """The close-probability model: fit its weights, judge it on held-out history."""


@model_group.command("fit")
@click.option("--now", metavar="ISO-8601", help="Fit on the history up to this instant.")
def model_fit(now) -> None:
    """Fit the engagement weights on the closed leads (needs NURTURE_MIN_CLOSED_FOR_FIT of them)."""
    from .probability_fit import fit_model

    cli = _cli()
    settings = cli.settings_for(now)
    with cli.open_session(settings) as session:
        fit = fit_model(session, settings, settings.clock.now())
    weights = fit.weights
    click.echo(f"fitted on {fit.n_leads} closed leads ({fit.n_won} won), {fit.metrics['snapshots']} snapshots")
    click.echo(f"  stage {weights['stage']:+.3f}  intercept {weights['intercept']:+.3f}  " +
               "  ".join(f"{name} {value:+.3f}" for name, value in weights["coef"].items()))
    click.echo("run `nurture leads rescore --all` to apply them to every lead now (the nightly job does it too)")


@model_group.command("evaluate")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--holdout", default=0.3, show_default=True, type=click.FloatRange(0.05, 0.9),
              help="Share of the newest closed leads held out for judging.")
@click.option("--now", metavar="ISO-8601", help="Use the history up to this instant.")
def model_evaluate(as_json, holdout, now) -> None:
    """Brier score, log loss and reliability of (a) stage only, (b) naive Bayes, (c) ours, on newer leads."""
    from .calibration import evaluate

    cli = _cli()
    settings = cli.settings_for(now)
    with cli.open_session(settings) as session:
        result = evaluate(session, settings, settings.clock.now(), holdout)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
        return
    click.echo(f"learned on {result.train_leads} leads created before {result.cutoff:%Y-%m-%d}; judged on "
               f"{result.test_leads} newer ones ({result.test_won} won), {result.test_snapshots} weekly snapshots")
    console = Console(width=120)
    scores = Table("model", "Brier", "log loss", title="held-out leads (lower is better)")
    for model in result.models:
        scores.add_row(model.name, f"{model.brier:.4f}", f"{model.log_loss:.4f}")
    console.print(scores)
    for model in result.models:
        table = Table("bin", "snapshots", "leads", "predicted", "observed", title=f"reliability: {model.name}")
        for row in model.reliability:
            table.add_row(row["bin"], str(row["snapshots"]), f"{row['leads']:.1f}", f"{row['predicted']:.1%}",
                          f"{row['observed']:.1%}")
        console.print(table)
    click.echo(result.verdict())


@click.command("rescore")
@click.option("--all", "everyone", is_flag=True, help="Every open lead (the nightly decay job).")
@click.option("--email", "emails", multiple=True, help="This lead (repeatable).")
@click.option("--now", metavar="ISO-8601", help="Score as of this instant.")
def leads_rescore(everyone, emails, now) -> None:
    """Recompute close probabilities (decay included) and notify reps of leads that warmed up."""
    from .warmup import on_activity, rescore_nightly

    if not everyone and not emails:
        raise click.UsageError("give --all or at least one --email")
    cli = _cli()
    settings = cli.settings_for(now)
    moment = settings.clock.now()
    with cli.open_session(settings) as session:
        if everyone:
            with cli._progress() as progress:
                task = progress.add_task("rescoring", total=None)
                count, warm = rescore_nightly(session, settings, moment,
                                              lambda done, total: progress.update(task, completed=done, total=total))
        else:
            wanted = [normalise(e) for e in emails]
            ids = dict(session.exec(select(Lead.email, Lead.id).where(Lead.email.in_(wanted))).all())
            missing = [e for e in wanted if e not in ids]
            if missing:
                raise NurtureError(f"no lead {', '.join(missing)}")
            warm = on_activity(session, settings, list(ids.values()), moment)
            session.commit()
            count = len(ids)
    click.echo(f"rescored {count} lead(s); warm: {len(warm)}")
    for found in warm:
        click.echo(f"  lead {found.lead_id}: {found.reason}" + ("" if found.notified else " (notified recently)"))


@click.command("why")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--now", metavar="ISO-8601", help="Say 'N days ago' as of this instant.")
def leads_why(email, as_json, now) -> None:
    """The lead's close probability and the contributions that add up to it."""
    from .probability import explain

    cli = _cli()
    settings = cli.settings_for(now)
    with cli.open_session(settings) as session:
        lead = session.exec(select(Lead).where(Lead.email == normalise(email))).first()
    if lead is None:
        raise NurtureError(f"no lead {email!r}")
    text = explain(lead.probability, lead.probability_why, settings.clock.now())
    if as_json:
        click.echo(json.dumps({"email": lead.email, "stage": lead.stage, "probability": lead.probability,
                               "score": lead.score, "scored_at": lead.probability_at.isoformat() if lead.probability_at else None,
                               "why": lead.probability_why, "text": text}, ensure_ascii=False, indent=2))
        return
    click.echo(f"{lead.email}: {text}")
