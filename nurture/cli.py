"""The ``nurture`` command line: one subcommand per operator task.

Errors the user can fix are printed as one line (``error: ...``) with exit
code 1, never a traceback. Every time-dependent command takes ``--now``
(or ``NURTURE_NOW``) to run "as of" an instant.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlmodel import Session, select

from . import db
from .config import Settings
from .addresses import normalise
from .errors import NurtureError
from .sequences import LANGUAGES

console = Console(stderr=True)
now_option = click.option("--now", metavar="ISO-8601", help="Act as if it were this instant (default: NURTURE_NOW or the clock).")


class NurtureGroup(click.Group):
    """Turns ``NurtureError`` into one clear line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NurtureError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def settings_for(now: str | None = None) -> Settings:
    return Settings.from_env().with_now(now)


def open_session(settings: Settings) -> Session:
    db.require_current_schema(settings.database_url)
    return Session(db.engine_for(settings.database_url), expire_on_commit=False)


@click.group(cls=NurtureGroup)
def cli() -> None:
    """nurture: email nurturing sequences on a business calendar."""


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="nurture")


# --- database ---------------------------------------------------------------------------------

@cli.group("db", cls=NurtureGroup)
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the current version."""
    settings = settings_for()
    db.upgrade(settings.database_url)
    click.echo(f"database at revision {db.current_revision(settings.database_url)}")


# --- campaigns --------------------------------------------------------------------------------

@cli.group(cls=NurtureGroup)
def campaigns() -> None:
    """Sequences and templates from files."""


@campaigns.command("load")
@click.option("--campaigns", "campaigns_dir", type=click.Path(file_okay=False), help="Folder of sequence YAML files.")
@click.option("--templates", "templates_dir", type=click.Path(file_okay=False), help="Folder of email templates.")
@now_option
def campaigns_load(campaigns_dir, templates_dir, now) -> None:
    """Check every sequence and template, then upsert them (all or nothing)."""
    from .loading import load_campaigns

    settings = settings_for(now)
    with open_session(settings) as session:
        report = load_campaigns(session, Path(campaigns_dir or settings.campaigns_dir),
                                Path(templates_dir or settings.templates_dir), settings.default_language,
                                settings.clock.now())
    for label, items in (("templates added", report.templates_added), ("templates updated", report.templates_updated),
                         ("sequences added", report.sequences_added), ("sequences updated", report.sequences_updated),
                         ("steps retired", report.steps_retired), ("stages added", report.stages_added),
                         ("stages updated", report.stages_updated), ("stages removed", report.stages_removed)):
        if items:
            click.echo(f"{label}: {', '.join(items)}")
    click.echo(f"unchanged: {report.unchanged}")


@campaigns.command("check")
@click.option("--campaigns", "campaigns_dir", type=click.Path(file_okay=False))
@click.option("--templates", "templates_dir", type=click.Path(file_okay=False))
def campaigns_check(campaigns_dir, templates_dir) -> None:
    """Check sequences and templates without touching the database."""
    from .loading import check_campaigns

    settings = settings_for()
    specs, compiled = check_campaigns(Path(campaigns_dir or settings.campaigns_dir),
                                      Path(templates_dir or settings.templates_dir), settings.default_language)
    click.echo(f"ok: {len(specs)} sequence(s), {len(compiled)} template(s)")


# --- users ------------------------------------------------------------------------------------

@cli.group(cls=NurtureGroup)
def users() -> None:
    """People who own leads and use the admin."""


@users.command("create")
@click.argument("email")
@click.option("--name", default="")
@click.option("--role", type=click.Choice(["admin", "marketer", "rep", "manager"]), default="rep", show_default=True)
@click.option("--title", default="", help="Job title, shown in the email signature.")
@click.option("--phone", default="", help="Phone, shown in the email signature.")
@click.option("--language", type=click.Choice(LANGUAGES), default=None,
              help="Language of the emails nurture sends the user (notices, digests). New users: en.")
@click.option("--admin", "make_admin", is_flag=True, help="Make the user an admin (same as --role admin); asks for a password.")
@click.option("--password", "set_password", is_flag=True, help="Ask for a password for the admin UI (read from stdin when not a terminal).")
@now_option
def users_create(email, name, role, title, phone, language, make_admin, set_password, now) -> None:
    """Create a user (or update the name, role, title, phone and language of an existing one)."""
    from email_validator import EmailNotValidError, validate_email

    from .models import User
    from .web.passwords import hash_password, password_problem

    try:
        email = validate_email(email, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise click.BadParameter(str(exc), param_hint="EMAIL") from None
    role = "admin" if make_admin else role
    password_hash = None
    if make_admin or set_password:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
        if password_problem(password):
            raise click.BadParameter(password_problem(password), param_hint="password")
        password_hash = hash_password(password)
    settings = settings_for(now)
    with open_session(settings) as session:
        user = session.exec(select(User).where(User.email == email)).first()
        created = user is None
        user = user or User(email=email, created_at=settings.clock.now())
        user.name, user.role, user.title, user.phone = name or user.name or email.split("@")[0], role, title or user.title, phone or user.phone
        user.password_hash = password_hash or user.password_hash
        user.language = language or user.language
        session.add(user)
        session.commit()
        click.echo(f"{'created' if created else 'updated'} {role} {email} (id {user.id})")


# --- leads ------------------------------------------------------------------------------------

@cli.group(cls=NurtureGroup)
def leads() -> None:
    """Import and inspect leads."""


@leads.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--map", "mappings", multiple=True, metavar="COLUMN=FIELD", help="Map a column to a lead field, e.g. 'Почта=email'.")
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--tag", "tags", multiple=True, help="Add this tag to every imported lead.")
@click.option("--rejects", type=click.Path(dir_okay=False, writable=True), help="Write rejected rows with line and reason to this CSV.")
@now_option
def leads_import(file, mappings, encoding, tags, rejects, now) -> None:
    """Import leads from a CSV file (created / updated / rejected)."""
    from .lead_import import import_leads

    mapping = parse_mapping(mappings, "--map", "COLUMN=FIELD")
    settings = settings_for(now)
    data = Path(file).read_bytes()
    with open_session(settings) as session, _progress() as progress:
        task = progress.add_task("importing", total=None)
        report = import_leads(session, data, settings.clock.now(), settings.default_language, mapping, encoding,
                              progress=lambda done, total: progress.update(task, completed=done, total=total), extra_tags=list(tags),
                              settings=settings)
    click.echo(f"rows: {report.rows}  created: {report.created}  updated: {report.updated}  "
               f"merged duplicates: {report.merged}  rejected: {len(report.rejected)}")
    show_rejects(report.rejected, rejects)
    if report.created + report.updated == 0:
        raise NurtureError("no valid rows: nothing was imported")


@leads.command("show")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def leads_show(email, as_json) -> None:
    """A lead with its enrollments, messages and events (its timeline)."""
    from .lead_view import lead_document

    settings = settings_for()
    with open_session(settings) as session:
        document = lead_document(session, email)
    if as_json:
        click.echo(json.dumps(document, ensure_ascii=False, indent=2, default=str))
        return
    lead = document["lead"]
    click.echo(f"{lead['first_name']} {lead['last_name']} <{lead['email']}>  {lead['company']}  "
               f"status={lead['status']} stage={lead['stage']} tz={lead['timezone'] or '-'} lang={lead['language']}")
    for enrollment in document["enrollments"]:
        click.echo(f"  {enrollment['sequence']}: {enrollment['status']} next={enrollment['next_step'] or '-'} at {enrollment['next_run_at'] or '-'} {enrollment['exit_reason']}")
    for message in document["messages"]:
        click.echo(f"    {message['created_at']} {message['step']:<16} {message['status']:<9} {message['subject']}")
    for event in document["events"]:
        who = "machine" if event["machine"] else "human"
        click.echo(f"    {event['occurred_at']} {event['kind']:<12} {who:<7} {', '.join(event['data'].get('reasons', []))}")


# --- enrollment and suppression ---------------------------------------------------------------

@cli.command("enroll")
@click.option("--sequence", "sequence_key", required=True, help="Sequence key, e.g. systematic-follow-up.")
@click.option("--stage")
@click.option("--owner", help="Owner's email.")
@click.option("--tag")
@click.option("--lead-id", "lead_ids", multiple=True, type=int)
@click.option("--email", "emails", multiple=True)
@click.option("--all", "everyone", is_flag=True, help="Every lead (still refusing suppressed and stopped ones).")
@now_option
def enroll_command(sequence_key, stage, owner, tag, lead_ids, emails, everyone, now) -> None:
    """Enroll the leads that match every filter given."""
    from .enrollment import LeadFilter, enroll

    settings = settings_for(now)
    with open_session(settings) as session:
        report = enroll(session, settings, sequence_key,
                        LeadFilter(stage, owner, tag, list(lead_ids), list(emails), everyone), settings.clock.now())
    click.echo(f"enrolled: {report.enrolled}  refused: {report.refused_count}")
    for reason, emails_refused in report.refused.items():
        shown = ", ".join(emails_refused[:5]) + (" ..." if len(emails_refused) > 5 else "")
        click.echo(f"  {reason}: {len(emails_refused)} ({shown})", err=True)


@cli.group(cls=NurtureGroup)
def suppress() -> None:
    """The suppression list: addresses that are never sent to."""


@suppress.command("add")
@click.argument("email")
@click.option("--reason", type=click.Choice(["manual", "unsubscribed", "bounce_hard", "complaint"]), default="manual", show_default=True)
@click.option("--note", default="")
@now_option
def suppress_add(email, reason, note, now) -> None:
    from .suppression import suppress as add

    settings = settings_for(now)
    with open_session(settings) as session:
        new = add(session, email, reason, settings.clock.now(), note)
        session.commit()
    click.echo(f"{'suppressed' if new else 'already suppressed'}: {normalise(email)}")


@suppress.command("remove")
@click.argument("email")
def suppress_remove(email) -> None:
    from .suppression import unsuppress

    settings = settings_for()
    with open_session(settings) as session:
        removed = unsuppress(session, email, settings.clock.now())
        session.commit()
    if not removed:
        raise NurtureError(f"{email} is not on the suppression list")
    click.echo(f"removed: {normalise(email)}")


@suppress.command("list")
@click.option("--json", "as_json", is_flag=True)
def suppress_list(as_json) -> None:
    from .models import Suppression

    settings = settings_for()
    with open_session(settings) as session:
        rows = session.exec(select(Suppression).order_by(Suppression.created_at)).all()
    if as_json:
        click.echo(json.dumps([{"email": r.email, "reason": r.reason, "note": r.note, "created_at": r.created_at.isoformat()} for r in rows], ensure_ascii=False))
        return
    for row in rows:
        click.echo(f"{row.email}\t{row.reason}\t{row.created_at:%Y-%m-%d %H:%M}\t{row.note}")


# --- inbound mail, events, figures ------------------------------------------------------------

@cli.group(cls=NurtureGroup)
def inbox() -> None:
    """Replies, auto-replies, bounces and complaints."""


@inbox.command("poll")
@now_option
def inbox_poll(now) -> None:
    """Read new mail from NURTURE_IMAP_URL and process it."""
    from .imap_poll import poll

    settings = settings_for(now)
    with open_session(settings) as session:
        report = poll(session, settings, settings.clock.now())
    click.echo(f"found {report.found}, processed {report.processed}, duplicates {report.duplicates}, failed {report.failed}")


@inbox.command("classify")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@now_option
def inbox_classify(files, now) -> None:
    """Print the verdict for each message as one JSON line; touches no database."""
    from dataclasses import asdict

    from .classification import classify

    today = settings_for(now).clock.now().date()
    for path in files:
        verdict = classify(Path(path).read_bytes(), today)
        document = {"file": path, **asdict(verdict)}
        document["return_date"] = verdict.return_date.isoformat() if verdict.return_date else None
        click.echo(json.dumps(document, ensure_ascii=False))


@cli.group(cls=NurtureGroup)
def events() -> None:
    """Tracking events."""


@events.command("drain")
def events_drain() -> None:
    """Move tracking hits from Redis into the database now (the scheduler does this every tick)."""
    from .event_stream import drain, stream_key
    from .queues import redis_connection
    from .reactions import on_tracking_events

    settings = settings_for()
    connection = redis_connection(settings)
    total = 0
    with open_session(settings) as session:
        while stored := drain(session, connection, stream_key(settings.queue_name), f"cli-{os.getpid()}",
                              on_events=lambda s, e: on_tracking_events(s, e, settings.clock.now(), settings)):
            total += stored
    click.echo(f"stored {total} event(s)")


@cli.command("stats")
@click.option("--sequence", "sequence_key")
@click.option("--json", "as_json", is_flag=True)
def stats_command(sequence_key, as_json) -> None:
    """Per step and variant: sent, human opens and clicks, replies, unsubscribes (machine events apart)."""
    from .stats import step_figures

    settings = settings_for()
    with open_session(settings) as session:
        figures = step_figures(session, sequence_key)
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in figures], ensure_ascii=False))
        return
    table = Table()
    for column in ("sequence", "step", "var", "sent", "bounced", "opens", "machine", "clicks", "machine",
                   "replies", "unsub", "open %", "click %", "reply %"):
        table.add_column(column)
    for f in figures:
        rates = f.rates()
        table.add_row(f.sequence, f.step, str(f.variant), str(f.sent), str(f.bounced), str(f.human_opens),
                      str(f.machine_opens), str(f.human_clicks), str(f.machine_clicks), str(f.replies),
                      str(f.unsubscribes), f"{rates['open_rate']:.1%}", f"{rates['click_rate']:.1%}",
                      f"{rates['reply_rate']:.1%}")
    Console().print(table)


# --- processes --------------------------------------------------------------------------------

@cli.command("scheduler")
@click.option("--once", is_flag=True, help="Run one tick and exit.")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between ticks.")
@now_option
def scheduler_command(once, interval, now) -> None:
    """Claim due steps and enqueue send batches, every --interval seconds."""
    from .queues import enqueue_send_batches, send_queue
    from .scheduling import run_tick

    from .periodic import Periodic
    from .tasks import attempt_journal

    settings = settings_for(now)
    queue = send_queue(settings)
    periodic = Periodic(settings, queue.connection)
    journal = attempt_journal(settings)

    def enqueue(ids: list[int]) -> None:
        enqueue_send_batches(queue, ids, settings.send_batch_size, settings.lease_seconds)

    while True:
        with open_session(settings) as session:
            report = run_tick(session, settings, settings.clock.now(), enqueue, journal)
            for line in periodic.run(session):
                click.echo(line)
        if once or report.messages or report.requeued or report.exited or report.expired:
            click.echo(f"{settings.clock.now():%Y-%m-%d %H:%M} queued {report.messages}, skipped {report.skipped}, "
                       f"tasks {report.tasks}, exited {report.exited}, completed {report.completed}, "
                       f"deferred {report.deferred}, requeued {report.requeued}, expired {report.expired}")
        if once:
            return
        time.sleep(interval)


@cli.command("worker")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--simple", is_flag=True, help="Run jobs in this process instead of a forked child (faster, less isolated).")
def worker_command(burst, simple) -> None:
    """Run an RQ worker on the send queue."""
    from rq import SimpleWorker, Worker

    from .queues import send_queue

    settings = settings_for()
    db.require_current_schema(settings.database_url)
    db.engine_for(settings.database_url).dispose()  # forked work horses must not share its sockets
    queue = send_queue(settings)
    worker_class = SimpleWorker if simple else Worker
    worker = worker_class([queue], connection=queue.connection)
    # with_scheduler: retries with backoff (notification webhooks) wait in RQ's scheduled registry until due
    worker.work(burst=burst, logging_level="WARNING", with_scheduler=True)


@cli.command("demo")
@click.option("--speed", default=86400.0, show_default=True, help="Simulated seconds per real second (86400: a day a second).")
@click.option("--days", default=200, show_default=True, help="Simulated days to run before stopping the clock.")
@click.option("--dir", "workdir", default="nurture-demo", show_default=True, type=click.Path(file_okay=False), help="Where the demo keeps its database and caught mail.")
@click.option("--port", default=5000, show_default=True, help="Web port (caught mail at /caught).")
@click.option("--headless", is_flag=True, help="No live table; print a summary at the end and exit.")
def demo_command(speed, days, workdir, port, headless) -> None:
    """Run everything at once on a sped-up clock: the main job on a fresh machine."""
    from .demo import run_demo

    run_demo(speed=speed, days=days, workdir=Path(workdir), port=port, headless=headless)


def parse_mapping(items: tuple[str, ...], option: str, shape: str) -> dict[str, str]:
    """``("Почта=email", ...)`` -> ``{"Почта": "email"}``; the last ``=`` splits, so columns may contain one."""
    mapping = {}
    for item in items:
        column, sep, target = item.rpartition("=")
        if not sep or not column.strip():
            raise click.BadParameter(f"{item!r}: use {shape}", param_hint=option)
        mapping[column] = target.strip()
    return mapping


def show_rejects(rejected: list, path: str | None) -> None:
    """The first rejected rows on stderr (line and reason), and all of them in ``path`` as CSV."""
    from .lead_import import rejects_csv

    for reject in rejected[:20]:
        click.echo(f"  line {reject.line}: {reject.reason}", err=True)
    if len(rejected) > 20:
        click.echo(f"  ... {len(rejected) - 20} more (use --rejects FILE)", err=True)
    if path:
        Path(path).write_text(rejects_csv(rejected), encoding="utf-8", newline="")
        click.echo(f"rejects written to {path}")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not sys.stderr.isatty())


from .cli_review import notifications, review  # noqa: E402  (defined there, registered here)

cli.add_command(review)
cli.add_command(notifications)

from .cli_analytics import commands as analytics_commands  # noqa: E402  (defined there, registered here)

for command in analytics_commands: cli.add_command(command)  # noqa: E701  funnel, steps, bottleneck, plan, forecast

from .cli_pipeline import history_group, leads_stage, pipeline_group  # noqa: E402  (defined there, registered here)

cli.add_command(pipeline_group)
cli.add_command(history_group)
leads.add_command(leads_stage)

from .cli_refusal import refusal_group  # noqa: E402  (defined there, registered here)

cli.add_command(refusal_group)

from .cli_model import leads_rescore, leads_why, model_group  # noqa: E402  (defined there, registered here)

cli.add_command(model_group)
leads.add_command(leads_rescore)
leads.add_command(leads_why)


if __name__ == "__main__":
    main()
