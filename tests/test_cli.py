"""The ``nurture`` command line: in-process with click's runner, and as the installed
command where exit codes and output streams matter."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import select

from nurture.cli import cli
from nurture.models import Enrollment, Lead, LeadTag, Message, Suppression

from conftest import BACKEND, CAMPAIGNS_DIR, PG_ADMIN_URL, START, drive, iso


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)
    return invoke


@pytest.fixture
def empty_database_url(tmp_path):
    """A database nobody has migrated."""
    from conftest import _forget_engine

    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
        yield url
        _forget_engine(url)
        return
    import psycopg

    name = f"nurture_test_{os.getpid()}_empty"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    _forget_engine(f"postgresql://postgres@127.0.0.1:5432/{name}")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_leads_show_json_prints_the_lead_its_enrollments_and_messages(leads, run):
    n = leads
    n.enroll()
    drive(n, until=START + timedelta(days=1, hours=16))
    result = run("leads", "show", "OLGA@example.com", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    lead = document["lead"]
    assert (lead["email"], lead["first_name"], lead["company"], lead["timezone"], lead["status"]) == (
        "olga@example.com", "Ольга", 'ООО "Ромашка"', "Europe/Moscow", "active")
    assert lead["tags"] == ["webinar"] and lead["suppressed"] is None
    (enrollment,) = document["enrollments"]
    assert (enrollment["sequence"], enrollment["status"], enrollment["next_step"]) == ("systematic-follow-up", "active", "follow-up")
    (message,) = document["messages"]
    stored = n.messages(Message.lead_id == n.lead("olga@example.com").id)[0]
    assert (message["step"], message["kind"], message["status"], message["message_id"], message["subject"]) == (
        "first-contact", "first_contact", "sent", stored.message_id, stored.subject)
    assert "Ольга" in result.stdout  # not \u-escaped


def test_leads_show_without_json_is_one_line_per_item(leads, run):
    n = leads
    n.enroll()
    result = run("leads", "show", "john@example.net")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("John Smith <john@example.net>  Acme Corp  status=active")
    assert lines[1].strip().startswith("systematic-follow-up: active next=first-contact")


def test_leads_show_unknown_lead_is_one_error_line(cast, run):
    result = run("leads", "show", "nobody@example.com")
    assert result.exit_code == 1
    assert result.stderr == "error: no lead 'nobody@example.com'\n"


def test_suppress_add_list_and_remove(leads, run):
    n = leads
    n.enroll()
    result = run("suppress", "add", " Olga@Example.com ", "--reason", "manual", "--note", "asked by phone")
    assert (result.exit_code, result.stdout) == (0, "suppressed: olga@example.com\n")
    assert run("suppress", "add", "olga@example.com").stdout == "already suppressed: olga@example.com\n"
    assert run("suppress", "add", "ghost@example.com", "--reason", "complaint").exit_code == 0

    listed = json.loads(run("suppress", "list", "--json").stdout)
    assert [(row["email"], row["reason"], row["note"]) for row in listed] == [
        ("olga@example.com", "manual", "asked by phone"), ("ghost@example.com", "complaint", "")]
    plain = run("suppress", "list").stdout.splitlines()
    assert plain[0].startswith("olga@example.com\tmanual\t2026-03-02 07:00\t")

    olga = n.lead("olga@example.com")
    (enrollment,) = n.enrollments(Enrollment.lead_id == olga.id)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "suppressed: manual")

    result = run("suppress", "remove", "OLGA@example.com")
    assert (result.exit_code, result.stdout) == (0, "removed: olga@example.com\n")
    assert n.all(select(Suppression.email)) == ["ghost@example.com"]
    result = run("suppress", "remove", "olga@example.com")
    assert result.exit_code == 1
    assert result.stderr == "error: olga@example.com is not on the suppression list\n"


def test_enroll_refuses_suppressed_and_archived_leads_with_a_reason(leads, run):
    n = leads
    assert run("suppress", "add", "olga@example.com").exit_code == 0
    with n.session() as s:
        s.execute(sa.update(Lead).where(Lead.email == "john@example.net").values(status="archived"))
        s.commit()
    result = run("enroll", "--sequence", "systematic-follow-up", "--all")
    assert result.exit_code == 0, result.output
    assert result.stdout == "enrolled: 2  refused: 2\n"
    assert "  suppressed (manual): 1 (olga@example.com)\n" in result.stderr
    assert "  lead is archived: 1 (john@example.net)\n" in result.stderr
    enrolled = {n.scalar(select(Lead.email).where(Lead.id == e.lead_id)) for e in n.enrollments()}
    assert enrolled == {"petr@example.org", "emma@example.co.uk"}

    again = run("enroll", "--sequence", "systematic-follow-up", "--tag", "webinar")
    assert again.stdout == "enrolled: 0  refused: 2\n"
    assert "already enrolled: 1 (petr@example.org)" in again.stderr
    assert n.count(Enrollment) == 2


def test_enroll_errors_are_one_line(cast, run):
    result = run("enroll", "--sequence", "nope", "--all")
    assert result.exit_code == 1
    assert result.stderr == "error: no sequence 'nope' (known: follow-up-after-refusal, re-offer-cold-leads, systematic-follow-up)\n"
    result = run("enroll", "--sequence", "systematic-follow-up")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: say which leads:")


def test_leads_import_shipped_sample_with_rejects_file(team, run, tmp_path):
    n = team
    result = run("leads", "import", str(CAMPAIGNS_DIR / "sample-leads.csv"), "--tag", "sample")
    assert result.exit_code == 0, result.output
    created = n.count(Lead)
    assert created > 0 and f"created: {created}" in result.stdout
    assert n.count(LeadTag, LeadTag.tag == "sample") == created

    bad = tmp_path / "bad.csv"
    bad.write_text("email;first_name\nnew@example.com;New\nnot-an-email;X\n;Y\n", encoding="utf-8")
    rejects = tmp_path / "rejects.csv"
    result = run("leads", "import", str(bad), "--rejects", str(rejects))
    assert result.exit_code == 0
    assert "rows: 3  created: 1  updated: 0  merged duplicates: 0  rejected: 2" in result.stdout
    assert "  line 3: email 'not-an-email': " in result.stderr and "  line 4: email is empty" in result.stderr
    lines = rejects.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "line,reason,email,first_name" and lines[1].startswith("3,")


def test_leads_import_without_valid_rows_exits_non_zero_and_changes_nothing(team, tmp_path):
    n = team
    n.import_csv("email,first_name\nkeep@example.com,Keep\n")
    before = [(lead.id, lead.email, lead.first_name, lead.updated_at) for lead in n.all(select(Lead))]
    bad = tmp_path / "bad.csv"
    bad.write_text("email,first_name\nnot-an-email,X\nkeep@example.com,Changed,oops\n", encoding="utf-8")
    proc = n.cli("leads", "import", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == "error: no valid rows: nothing was imported"
    assert "Traceback" not in proc.stderr
    assert [(lead.id, lead.email, lead.first_name, lead.updated_at) for lead in n.all(select(Lead))] == before


def test_leads_import_of_an_unreadable_file_is_one_error_line(team, tmp_path):
    n = team
    bad = tmp_path / "cp1251.csv"
    bad.write_bytes("email;first_name\nolga@example.com;Ольга\n".encode("cp1251"))
    proc = n.cli("leads", "import", str(bad))
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: line 2: not UTF-8")
    assert "--encoding cp1251" in proc.stderr
    assert n.cli("leads", "import", str(bad), "--encoding", "cp1251").returncode == 0
    assert n.lead("olga@example.com").first_name == "Ольга"


NOT_MIGRATED = "error: the database has no nurture schema: run `nurture db upgrade` first\n"


def test_unmigrated_database_is_one_line_naming_db_upgrade(nurture, empty_database_url, monkeypatch):
    monkeypatch.setenv("NURTURE_DATABASE_URL", empty_database_url)
    proc = nurture.cli("worker", "--burst")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert (proc.stdout, proc.stderr) == ("", NOT_MIGRATED)


@pytest.mark.parametrize("args", [
    ("leads", "show", "olga@example.com"),
    ("enroll", "--sequence", "systematic-follow-up", "--all"),
    ("scheduler", "--once"),
    ("suppress", "list"),
    ("suppress", "add", "x@example.com"),
    ("campaigns", "load"),
])
def test_every_database_command_refuses_an_unmigrated_database(nurture, empty_database_url, monkeypatch, run, args):
    monkeypatch.setenv("NURTURE_DATABASE_URL", empty_database_url)
    result = run(*args)
    assert result.exit_code == 1
    assert (result.stdout, result.stderr) == ("", NOT_MIGRATED)


def test_db_upgrade_then_the_commands_work(nurture, empty_database_url, monkeypatch, run):
    monkeypatch.setenv("NURTURE_DATABASE_URL", empty_database_url)
    result = run("db", "upgrade")
    assert result.exit_code == 0 and result.stdout.startswith("database at revision ")
    assert run("campaigns", "load").stdout.startswith("templates added: ")
    assert run("suppress", "list").stdout == ""


def test_production_with_the_default_secret_refuses_to_start(nurture, monkeypatch):
    monkeypatch.setenv("NURTURE_ENV", "production")
    monkeypatch.delenv("NURTURE_SECRET_KEY")
    proc = nurture.cli("scheduler", "--once")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: NURTURE_SECRET_KEY: set a random secret")
    assert len(proc.stderr.splitlines()) == 1


def test_scheduler_once_and_forking_worker_burst_send_a_due_message(leads):
    n = leads
    n.enroll()
    olga = n.lead("olga@example.com")
    (enrollment,) = n.enrollments(Enrollment.lead_id == olga.id)
    n.at(enrollment.next_run_at)
    proc = n.cli("scheduler", "--once", "--now", iso(enrollment.next_run_at), check=True)
    assert "queued 1," in proc.stdout
    proc = n.cli("worker", "--burst", check=True)
    (_, rcpts, _), = n.smtp.messages
    assert rcpts == ["olga@example.com"]
    (message,) = n.messages()
    assert message.status == "sent" and message.sent_at == enrollment.next_run_at


def test_leads_show_lists_the_events_of_the_lead_on_its_timeline(team):
    from nurture.models import Event, Lead

    n = team
    n.import_csv("email,first_name\nolga@example.com,Olga\n")
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "olga@example.com")).one()
        s.add(Event(lead_id=lead.id, kind="open", is_machine=True, occurred_at=n.now, data={"reasons": ["HEAD request"]}))
        s.add(Event(lead_id=lead.id, kind="reply", occurred_at=n.now, data={"text": "Давайте созвонимся"}))
        s.commit()
    document = json.loads(n.cli("leads", "show", "olga@example.com", "--json", check=True).stdout)
    assert [(e["kind"], e["machine"]) for e in document["events"]] == [("open", True), ("reply", False)]
    assert document["events"][1]["data"]["text"] == "Давайте созвонимся"
