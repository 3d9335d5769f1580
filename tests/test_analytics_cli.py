"""The analytics commands as a manager runs them: tables, --json, CSV, charts, clear errors."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest
from click.testing import CliRunner
from sqlmodel import select

from conftest import START
from nurture.cli import cli
from nurture.models import Plan
from pipeline_history import add_lead, simulate

TRUTH = {"new": 0.7, "contacted": 0.5, "engaged": 0.6, "qualified": 0.7, "proposal": 0.6, "negotiation": 0.8}


@pytest.fixture
def run(nurture):
    """The command in-process (click's runner); ``nurture.cli`` runs the installed one where the process matters."""
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, (result.stdout, result.stderr)
        return result
    return invoke


@pytest.fixture
def history(nurture):
    """300 simulated leads over the 20 weeks before START, plus a few open ones with sources in Russian."""
    with nurture.session() as s:
        simulate(s, TRUTH, 300, START - timedelta(days=150), spread_days=140)
        for i, source in enumerate(("Выставка", "Выставка", "webinar")):
            add_lead(s, f"open{i}@example.com", [("new", START - timedelta(days=9)), ("engaged", START - timedelta(days=3))],
                     source=source, probability=0.3, deal_value=5000)
    return nurture


def test_funnel_table_json_and_csv(history, tmp_path, run):
    table = history.cli("funnel", check=True).stdout  # the installed command, piped
    for expected in ("Funnel", "Contacted", "Negotiation", "conversion", "Time in stage"):
        assert expected in table
    data = json.loads(run("funnel", "--json").stdout)
    [row] = data["rows"]
    assert row["leads"] == 303 and data["stages"][0] == "new" and row["stages"][-1]["stage"] == "won"
    out = tmp_path / "funnel.csv"
    proc = run("funnel", "--by", "month", "--source", "--csv", str(out))
    assert "Выставка" in proc.stdout and "Conversion by month and source" in proc.stdout
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {"cohort", "source", "stage", "reached", "conversion", "median_days", "p90_days"} <= set(rows[0])
    assert any(r["source"] == "Выставка" and r["stage"] == "engaged" and r["reached"] == "2" for r in rows)


def test_funnel_charts_are_valid_svg_and_png(history, tmp_path, run):
    svg, png = tmp_path / "funnel.svg", tmp_path / "trend.png"
    run("funnel", "--chart", str(svg), "--trend-chart", str(png))
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "Contacted" in texts and "Negotiation" in texts and "303" in texts
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trend_svg = tmp_path / "trend.svg"
    run("funnel", "--by", "month", "--trend-chart", str(trend_svg))
    assert "Conversion by entry cohort" in " ".join(
        t.text or "" for t in ET.parse(trend_svg).getroot().iter("{http://www.w3.org/2000/svg}text"))


def test_a_bad_chart_name_is_one_error_line_and_writes_nothing(history, tmp_path):
    proc = history.cli("funnel", "--chart", str(tmp_path / "funnel.jpg"))
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path / 'funnel.jpg'}: a chart file must end in .svg or .png"
    assert not list(tmp_path.glob("funnel.*"))


def test_plan_is_printed_stored_and_answers_what_if(history, run):
    proc = run("plan", "--deals", "30", "--by", "2026-06-30")
    assert "New leads needed" in proc.stdout and "per week" in proc.stdout and "leads must enter by" in proc.stdout
    data = json.loads(run("plan", "--deals", "30", "--by", "2026-06-30", "--json").stdout)
    better = json.loads(run("plan", "--deals", "30", "--by", "2026-06-30", "--what-if", "contacted=+0.1",
                            "--json").stdout)
    assert better["leads_mean"] < data["leads_mean"] and better["leads_at_confidence"] < data["leads_at_confidence"]
    assert data["leads_at_confidence"] > data["leads_mean"] > 0
    assert date.fromisoformat(data["latest_start"]) > START.date()
    plans = history.all(select(Plan).order_by(Plan.id))
    assert [p.id for p in plans] == [1, 2, 3] and plans[2].what_if == {"contacted": 0.1}
    assert plans[1].result["leads_mean"] == data["leads_mean"] and plans[1].by_date == date(2026, 6, 30)


@pytest.mark.parametrize("args, message", [
    (("--by", "2026-01-31"), "error: the date 2026-01-31 is not in the future (today is 2026-03-02)"),
    (("--by", "2026-06-30", "--what-if", "contacted=0.5"), "write stage=+0.05 or stage=-5%"),
    (("--by", "2026-06-30", "--what-if", "kontakted=+0.1"), "unknown stage 'kontakted'"),
    (("--by", "2026-06-30", "--confidence", "1.5"), "confidence: 1.5 must be between 0 and 1"),
    (("--by", "31.03.2026",), "Invalid value for '--by'"),
])
def test_plan_errors_are_one_clear_line_and_store_nothing(history, args, message, run):
    result = run("plan", "--deals", "10", *args, ok=False)
    assert result.exit_code != 0 and message in result.stderr
    assert history.count(Plan) == 0


def test_plan_with_no_history_uses_the_manual_probabilities(nurture, run):
    data = json.loads(run("plan", "--deals", "2", "--by", "2026-12-31", "--json").stdout)
    assert data["path_conversion"] == pytest.approx(0.02)  # the shipped pipeline's P(won | new)
    assert data["leads_mean"] == 100 and data["cycle_days"] is None
    assert any("no won deal has a measured cycle time" in n for n in data["notes"])


def test_forecast_table_json_and_csv(history, tmp_path, run):
    assert "Forecast from the open pipeline" in run("forecast").stdout
    rows = json.loads(run("forecast", "--json").stdout)
    total = rows[-1]
    assert total["month"] == "total" and total["leads"] >= 3
    out = tmp_path / "forecast.csv"
    run("forecast", "--csv", str(out))
    assert list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))[-1]["month"] == "total"


def test_bottleneck_json_and_table(history, run):
    data = json.loads(run("bottleneck", "--json").stdout)
    assert data["reference"] == "trailing average" and len(data["steps"]) == 6
    assert "Steps in the last 28 days" in run("bottleneck").stdout


def test_steps_with_nothing_sent(nurture, run):
    assert run("steps").stdout.strip() == "nothing sent yet"
    assert json.loads(run("steps", "--json").stdout) == {"steps": [], "verdicts": []}
    proc = nurture.cli("steps", "--sequence", "nope")
    assert proc.returncode == 1 and "error: unknown sequence 'nope'" in proc.stderr


def test_steps_after_sending(leads, run):
    leads.enroll()
    from conftest import send_due

    send_due(leads)
    data = json.loads(run("steps", "--json").stdout)
    assert sum(r["sent"] for r in data["steps"]) >= 1 and all("delivered" in r for r in data["steps"])
    assert "Step performance" in run("steps").stdout
