"""CRM history import: the Maven sample's opportunities, per-change files, and every kind of bad input."""

from __future__ import annotations

import csv
import io
import json

import pytest
import sqlalchemy as sa
from sqlmodel import select

from nurture.errors import ImportFileError
from nurture.history_import import import_history
from nurture.models import Lead, StageChange
from conftest import corpus_file


CHANGES_CSV = """\
Почта;Этап;Дата;Сумма;Причина отказа;Комментарий
olga@example.com;Новый;01.02.2026;;;
olga@example.com;Демо;10.02.2026 14:30;;;показали продукт
olga@example.com;won;2026-02-20T09:00:00+03:00;125 000,50;;подписали
petr@example.org;contacted;2026-01-15;;;
petr@example.org;lost;2026-02-01;;Цена;дорого
"""


def history(n, text: str | bytes, **kwargs):
    data = text.encode("utf-8") if isinstance(text, str) else text
    with n.session() as s:
        return import_history(s, data, n.now, settings=n.settings, **kwargs)


def counts(n) -> tuple[int, int]:
    return n.count(Lead), n.count(StageChange)


@pytest.fixture
def maven_csv():
    return corpus_file("crm", "maven-crm-sales-opportunities", "sales_pipeline.csv")


def test_the_maven_export_is_imported_and_stats_learn_its_win_rate(nurture, maven_csv):
    n = nurture
    with open(maven_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    won = sum(r["deal_stage"] == "Won" for r in rows)
    lost = sum(r["deal_stage"] == "Lost" for r in rows)
    dated = sum(bool(r["engage_date"] or r["close_date"]) for r in rows)
    proc = n.cli("history", "import", str(maven_csv), check=True)
    assert (f"shape: one row per opportunity  rows: {len(rows)}  changes: {2 * dated + won + lost}  "
            f"leads created: {dated}") in proc.stdout
    assert f"skipped (no dates): {len(rows) - dated}  rejected: 0" in proc.stdout
    stats = {row["key"]: row for row in json.loads(n.cli("pipeline", "stats", "--json", check=True).stdout)["stages"]}
    win_rate = won / (won + lost)
    assert stats["engaged"]["learned"] == pytest.approx(win_rate, abs=1e-9)
    assert stats["contacted"]["learned"] == pytest.approx(win_rate, abs=1e-9)  # every opportunity got to engaging
    assert (stats["engaged"]["exits"], stats["engaged"]["won"], stats["won"]["entered"]) == (won + lost, won, won)
    assert stats["engaged"]["blended"] == pytest.approx((20 * 0.12 + (won + lost) * win_rate) / (20 + won + lost))
    total = sum(float(r["close_value"] or 0) for r in rows if r["deal_stage"] == "Won")
    assert n.scalar(select(sa.func.sum(StageChange.deal_value))) == pytest.approx(total)
    # the opportunities are history: placeholder addresses that can never be mailed
    sample = n.scalar(select(Lead).where(Lead.external_id == rows[0]["opportunity_id"]))
    assert sample.email.endswith("@history.invalid") and sample.status == "archived"
    assert (sample.stage, sample.stage_source, sample.company) == ("won", "import", rows[0]["account"])
    before = counts(n)
    again = n.cli("history", "import", str(maven_csv), check=True)
    assert "changes: 0" in again.stdout and f"already imported: {2 * dated + won + lost}" in again.stdout
    assert counts(n) == before


def test_one_row_per_change_with_russian_headers_dates_and_labels(leads):
    n = leads
    report = history(n, CHANGES_CSV, stage_map={"Новый": "new", "Демо": "qualified"})
    assert (report.shape, report.changes, report.rejected) == ("changes", 5, [])
    assert (report.leads_created, report.leads_updated) == (0, 2)
    olga = n.lead("olga@example.com")
    assert (olga.stage, olga.deal_value, olga.stage_source) == ("won", 125000.5, "import")
    petr = n.lead("petr@example.org")
    assert (petr.stage, petr.lost_reason) == ("lost", "price")
    rows = n.all(select(StageChange).where(StageChange.lead_id == olga.id).order_by(StageChange.changed_at))
    assert [(r.from_stage, r.to_stage, r.note) for r in rows] == [
        (None, "new", ""), ("new", "qualified", "показали продукт"), ("qualified", "won", "подписали")]
    assert rows[2].changed_at.isoformat() == "2026-02-20T06:00:00+00:00"


def test_bad_rows_are_rejected_with_their_line_and_the_rest_imported(leads):
    n = leads
    text = ("email,stage,entered_at,deal_value,lost_reason\n"
            "olga@example.com,qualifed,2026-02-01,,\n"
            "olga@example.com,qualified,2026-02-31,,\n"
            "olga@example.com,qualified,2027-01-01,,\n"
            ",qualified,2026-02-01,,\n"
            "olga@example.com,won,2026-02-01,lots,\n"
            "olga@example.com,lost,2026-02-01,,cost\n"
            "olga@example.com,proposal,2026-02-01,,price\n"
            f"olga@example.com,{'x' * 150},2026-02-01,,\n"
            "john@example.net,qualified,2026-02-01,,\n")
    report = history(n, text)
    reasons = {r.line: r.reason for r in report.rejected}
    assert reasons[2].startswith("stage 'qualifed' is not a pipeline stage (did you mean 'qualified'?)")
    assert reasons[3] == "entered_at '2026-02-31' is not a date: use YYYY-MM-DD (or DD.MM.YYYY), optionally with a time"
    assert reasons[4] == "entered_at '2027-01-01' is in the future"
    assert reasons[5] == "neither email nor external_id is given: the row names no lead"
    assert reasons[6] == "deal_value 'lots' is not a number"
    assert reasons[7].startswith("lost_reason 'cost' is not one of price, timing")
    assert reasons[8] == "lost_reason 'price' on stage proposal, which is not a lost stage"
    assert reasons[9] == "stage is 150 characters; at most 100"
    assert report.changes == 1 and n.lead("john@example.net").stage == "qualified"


@pytest.mark.parametrize("data, message", [
    (b'email,stage,entered_at\nolga@example.com,"won,2026-02-01\n', "line 2: malformed CSV"),
    ("email,stage,entered_at\nolga@example.com,Выиграна,2026-02-01\n".encode("cp1251"),
     "line 2: not UTF-8 (byte 0xc2); it looks like Windows-1251: save it as UTF-8 or pass --encoding cp1251"),
    (b"email,stage,entered_at\nolga@example.com,won," + b"9" * (17 * 1024 * 1024) + b"\n", "line 2: malformed CSV: field larger than field limit"),
    (b"email,stage\nolga@example.com,won\n", "line 1: no date column"),
    (b"email,entered_at\nolga@example.com,2026-02-01\n", "line 1: no stage column among 'email', 'entered_at'"),
    (b"stage,entered_at\nwon,2026-02-01\n", "line 1: no email or external id column"),
    (b"", "the file is empty"),
], ids=["unclosed-quote", "cp1251", "huge-field", "no-date", "no-stage", "no-lead", "empty"])
def test_a_file_that_cannot_be_read_changes_nothing(leads, data, message):
    n = leads
    before = counts(n)
    with pytest.raises(ImportFileError) as info:
        history(n, data)
    assert str(info.value).startswith(message)
    assert counts(n) == before


def test_other_encodings_and_stage_maps_are_checked(leads):
    n = leads
    data = "email,stage,entered_at\nolga@example.com,Выиграна,2026-02-01\n".encode("cp1251")
    with pytest.raises(ImportFileError, match=r"--stage-map: 'wonn' is not a pipeline stage \(did you mean 'won'\?\)"):
        history(n, data, encoding="cp1251", stage_map={"Выиграна": "wonn"})
    report = history(n, data, encoding="cp1251", stage_map={"Выиграна": "won"})
    assert report.changes == 1 and n.lead("olga@example.com").stage == "won"


def test_the_cli_rejects_a_file_with_no_valid_row_and_writes_the_rejects(leads, tmp_path):
    n = leads
    path = tmp_path / "history.csv"
    path.write_text("email,stage,entered_at\nolga@example.com,Заключена,2026-02-01\n", encoding="utf-8")
    rejects = tmp_path / "rejects.csv"
    proc = n.cli("history", "import", str(path), "--rejects", str(rejects))
    assert proc.returncode == 1
    assert "line 2: stage 'Заключена' is not a pipeline stage" in proc.stderr
    assert proc.stderr.strip().endswith("error: no valid rows: nothing was imported")
    assert list(csv.reader(io.StringIO(rejects.read_text(encoding="utf-8"))))[1][:2] == [
        "2", proc.stderr.split("line 2: ")[1].split("\n")[0]]
    assert n.count(StageChange) == 0
    mapped = n.cli("history", "import", str(path), "--stage-map", "Заключена=won", "--map", "email=email", check=True)
    assert "changes: 1" in mapped.stdout and n.lead("olga@example.com").stage == "won"
