"""CLI for the pipeline: check the file, learned stage probabilities, moving a lead by hand, CRM history import.

``nurture pipeline check [FILE]``, ``nurture pipeline stats [--json]``,
``nurture leads stage EMAIL STAGE [--reason R] [--note T] [--by EMAIL] [--value N]`` and
``nurture history import FILE.csv [--map COL=FIELD] [--stage-map CRM=STAGE]``.
Registered in ``cli.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from sqlmodel import select

from .addresses import normalise
from .cli import NurtureGroup, _progress, now_option, open_session, parse_mapping, settings_for, show_rejects
from .errors import NurtureError


@click.group("pipeline", cls=NurtureGroup)
def pipeline_group() -> None:
    """Stages, stage rules and learned stage probabilities."""


@pipeline_group.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def pipeline_check(file) -> None:
    """Check a pipeline file (default: the campaigns folder's pipeline.yaml) without touching the database."""
    from .pipeline import load_pipeline, pipeline_file

    path = Path(file) if file else pipeline_file(Path(settings_for().campaigns_dir))
    config = load_pipeline(path)
    click.echo(f"ok: {path}: {len(config.stages)} stages ({' -> '.join(config.chain)}; "
               f"beside it: {', '.join(k for k in config.keys if k not in config.chain)}), "
               f"{len(config.lost_reasons)} lost reasons")


@pipeline_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def pipeline_stats(as_json) -> None:
    """P(won | stage): the manager's number, the one learned from the history, and the blend, with counts."""
    from .conversion import stage_probabilities
    from .pipeline import stored_pipeline

    settings = settings_for()
    with open_session(settings) as session:
        config = stored_pipeline(session)
        stats = stage_probabilities(session, config)
    if as_json:
        click.echo(json.dumps({"prior_weight": config.prior_weight,
                               "stages": [row.as_dict() for row in stats.values()]}, ensure_ascii=False, indent=2))
        return
    table = Table(title=f"P(won | stage); the manual number is worth {config.prior_weight:g} leads")
    for column in ("stage", "manual", "learned", "blended", "entered", "left", "advanced", "won", "to next"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    percent = lambda value: "-" if value is None else f"{value:.1%}"  # noqa: E731
    for row in stats.values():
        table.add_row(row.key, percent(row.manual), percent(row.learned), percent(row.blended), str(row.entered),
                      str(row.exits), str(row.advanced), str(row.won), percent(row.conversion_to_next))
    Console(width=max(Console().width, 100)).print(table)  # nine columns: never squeezed into 80


@click.command("stage")
@click.argument("email")
@click.argument("stage")
@click.option("--reason", "lost_reason", default="", help="Why the deal was lost (required for a lost stage).")
@click.option("--note", default="", help="Why the stage changed, kept with the change.")
@click.option("--by", "by_email", help="The user making the change (email).")
@click.option("--value", type=float, help="The deal value (e.g. when won).")
@now_option
def leads_stage(email, stage, lost_reason, note, by_email, value, now) -> None:
    """Move a lead to STAGE by hand (stage rules never move it back past it)."""
    from .models import Lead, User
    from .probability import rescore
    from .stages import move_stage

    settings = settings_for(now)
    with open_session(settings) as session:
        lead = session.exec(select(Lead).where(Lead.email == normalise(email))).first()
        if lead is None:
            raise NurtureError(f"no lead with email {email!r}")
        by_user_id = None
        if by_email:
            by_user_id = session.exec(select(User.id).where(User.email == normalise(by_email))).first()
            if by_user_id is None:
                raise NurtureError(f"--by: {by_email!r} is not a user (add it with `nurture users create {by_email}`)")
        before = lead.stage
        try:
            change = move_stage(session, lead, stage, source="manual", now=settings.clock.now(), note=note,
                                by_user_id=by_user_id, lost_reason=lost_reason, deal_value=value)
            if change:
                rescore(session, settings, [lead.id], change.changed_at)  # the new stage's probability, at once
        except ValueError as exc:
            raise NurtureError(str(exc)) from None
        session.commit()
    if change is None:
        click.echo(f"{lead.email} is already in {stage}")
    else:
        click.echo(f"{lead.email}: {before} -> {stage}" + (f" ({lost_reason})" if lost_reason else "")
                   + (f", deal value {value:g}" if value is not None else ""))


@click.group("history", cls=NurtureGroup)
def history_group() -> None:
    """Stage history from another CRM."""


@history_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--map", "mappings", multiple=True, metavar="COLUMN=FIELD",
              help="Map a column: email, external_id, stage, entered_at, created_at, engaged_at, closed_at, deal_value, lost_reason, note, company.")
@click.option("--stage-map", "stage_mappings", multiple=True, metavar="CRMSTAGE=STAGE", help="Map a CRM stage name to a pipeline stage, e.g. 'Demo=qualified'.")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--rejects", type=click.Path(dir_okay=False, writable=True), help="Write rejected rows with line and reason to this CSV.")
@now_option
def history_import(file, mappings, stage_mappings, encoding, rejects, now) -> None:
    """Import past stage changes (one row per change, or one row per opportunity)."""
    from .history_import import import_history

    mapping = parse_mapping(mappings, "--map", "COLUMN=FIELD")
    stage_map = parse_mapping(stage_mappings, "--stage-map", "CRMSTAGE=STAGE")
    settings = settings_for(now)
    data = Path(file).read_bytes()
    with open_session(settings) as session, _progress() as progress:
        task = progress.add_task("importing history", total=None)
        report = import_history(session, data, settings.clock.now(), mapping, stage_map, encoding,
                                progress=lambda done, total: progress.update(task, completed=done, total=total),
                                settings=settings)
    click.echo(f"shape: one row per {'change' if report.shape == 'changes' else 'opportunity'}  rows: {report.rows}  "
               f"changes: {report.changes}  leads created: {report.leads_created}  leads updated: {report.leads_updated}  "
               f"already imported: {report.duplicates}  skipped (no dates): {report.skipped}  rejected: {len(report.rejected)}")
    show_rejects(report.rejected, rejects)
    if report.changes + report.duplicates == 0:
        raise NurtureError("no valid rows: nothing was imported")
