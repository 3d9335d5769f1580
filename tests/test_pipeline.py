"""The pipeline file: checks with clear errors, syncing into the database, and the CLI around it."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from sqlmodel import select

from nurture.errors import SequenceFileError
from nurture.models import Lead, Sequence, Stage, StageChange, User
from nurture.pipeline import DEFAULT_PIPELINE_PATH, default_pipeline, load_pipeline, stored_pipeline, sync_pipeline

from conftest import CAMPAIGNS_DIR, TEMPLATES_DIR


def document() -> dict:
    return yaml.safe_load(DEFAULT_PIPELINE_PATH.read_text(encoding="utf-8"))


def write(tmp_path, data: dict | str, name: str = "pipeline.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def stage(data: dict, key: str) -> dict:
    return next(s for s in data["stages"] if s["key"] == key)


def error_of(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SequenceFileError) as info:
        load_pipeline(path)
    return str(info.value).replace(str(path), "pipeline.yaml")


def test_the_shipped_pipeline_is_the_default_chain_with_sensible_probabilities():
    config = default_pipeline()
    assert config.chain == ["new", "contacted", "engaged", "qualified", "proposal", "negotiation", "won"]
    assert config.keys[len(config.chain):] == ["lost", "cold", "archived"]
    probabilities = [config.stage(k).probability for k in config.chain]
    assert probabilities == sorted(probabilities) and probabilities[-1] == 1.0
    assert config.lost_reason_keys == ["price", "timing", "no_budget", "competitor", "no_need", "no_answer"]
    assert config.lost_reasons[0].label.ru == "Цена"
    assert (config.rules.cold_after_days, config.rules.cold_return_months_min, config.rules.cold_return_months_max) == (30, 3, 6)
    assert config.prior_weight == 20


def test_a_probability_outside_0_to_1_names_the_file_stage_and_field(tmp_path):
    data = document()
    stage(data, "engaged")["probability"] = 1.5
    assert error_of(tmp_path, data) == ("pipeline.yaml: stages[3] (engaged): field 'probability': "
                                        "Input should be less than or equal to 1")
    stage(data, "engaged")["probability"] = -0.1
    assert "stages[3] (engaged): field 'probability': Input should be greater than or equal to 0" in error_of(tmp_path, data)


def test_an_unknown_stage_in_a_rule_is_refused_with_a_suggestion(tmp_path):
    data = document()
    data["rules"]["engagement"] = "engagd"
    assert error_of(tmp_path, data) == "pipeline.yaml: rules.engagement: 'engagd' is not a stage (did you mean 'engaged'?)"
    data["rules"]["engagement"] = "lost"
    assert "rules.engagement: 'lost' must be a stage of the chain before won" in error_of(tmp_path, data)
    data = document()
    data["rules"]["cold"] = "archived"
    assert "rules.cold: 'archived' is not flagged cold: true" in error_of(tmp_path, data)


def test_a_cycle_in_the_stage_order_is_refused(tmp_path):
    data = document()
    stage(data, "qualified")["next"] = "engaged"  # engaged -> qualified -> engaged
    stage(data, "contacted")["next"] = "proposal"
    message = error_of(tmp_path, data)
    assert "the next: links make a cycle: engaged -> qualified -> engaged" in message


@pytest.mark.parametrize("change, message", [
    (lambda d: stage(d, "proposal").update(next="negotiaton"),
     "stages (proposal): next: 'negotiaton' is not a stage (did you mean 'negotiation'?)"),
    (lambda d: stage(d, "qualified").update(next="negotiation"),
     "stages qualified and proposal both have next: negotiation; the order must be one chain"),
    (lambda d: d["stages"].append({"key": "engaged", "name": "Again", "probability": 0.1}),
     "stages: key 'engaged' is used twice; keys must be unique"),
    (lambda d: stage(d, "won").update(probabilty=1),
     "stages[7] (won): field 'probabilty': unknown field (did you mean 'probability'?)"),
    (lambda d: stage(d, "won").update(order=3), "stages[7] (won): 'order' is not written in the file"),
    (lambda d: stage(d, "negotiation").pop("next"), "the chain new -> contacted -> engaged -> qualified -> proposal -> "
                                                    "negotiation must end at a won stage"),
    (lambda d: d["stages"].append({"key": "nurturing", "name": "Nurturing", "probability": 0.1}),
     "stages (nurturing): not in the chain: link it with next: or flag it lost, cold or terminal"),
    (lambda d: stage(d, "lost").update(next="won"), "stages[8] (lost): a won, lost or terminal stage has no next:"),
    (lambda d: d["lost_reasons"][0]["label"].pop("ru"), "lost_reasons[1] (price): field 'label.ru': Field required"),
    (lambda d: d["rules"].update(cold_return_months_min=7), "cold_return_months_min (7) is more than cold_return_months_max (6)"),
    (lambda d: d.update(prior_wieght=5), "pipeline.yaml: field 'prior_wieght': unknown field (did you mean 'prior_weight'?)"),
], ids=["unknown-next", "branch", "duplicate-key", "misspelt-field", "order", "no-won-end", "loose-stage",
        "terminal-next", "label", "return-window", "top-level-typo"])
def test_every_structural_mistake_gets_a_clear_error(tmp_path, change, message):
    data = document()
    change(data)
    assert message in error_of(tmp_path, data)


def test_unreadable_files_are_refused(tmp_path):
    assert "pipeline.yaml line 3: not valid YAML" in error_of(tmp_path, "stages:\n  - key: [new\n")
    path = tmp_path / "pipeline.yaml"
    path.write_bytes("stages: Новый".encode("cp1251"))
    with pytest.raises(SequenceFileError, match="not UTF-8"):
        load_pipeline(path)
    assert "expected a mapping" in error_of(tmp_path, "- just a list\n")


def test_cyrillic_stage_names_are_fine(tmp_path):
    data = document()
    stage(data, "qualified")["name"] = "Квалифицирован"
    assert load_pipeline(write(tmp_path, data)).stage("qualified").name == "Квалифицирован"


def test_campaigns_load_syncs_the_pipeline_and_a_bad_one_changes_nothing(nurture, tmp_path):
    n = nurture
    campaigns = tmp_path / "campaigns"
    shutil.copytree(CAMPAIGNS_DIR, campaigns, ignore=shutil.ignore_patterns("*.csv"))
    data = document()
    stage(data, "qualified")["probability"] = 1.5
    write(campaigns, data)
    with pytest.raises(SequenceFileError, match=r"pipeline.yaml: stages\[4\] \(qualified\): field 'probability'"):
        n.load_campaigns(campaigns, TEMPLATES_DIR)
    assert n.count(Stage) == 0 and n.count(Sequence) == 0
    stage(data, "qualified")["probability"] = 0.3
    data["rules"]["cold_after_days"] = 45
    write(campaigns, data)
    report = n.load_campaigns(campaigns, TEMPLATES_DIR)
    assert report.stages_added == default_pipeline().keys
    rows = {s.key: s for s in n.all(select(Stage))}
    assert (rows["qualified"].probability, rows["qualified"].position) == (0.3, 3)
    assert (rows["won"].is_won, rows["won"].is_terminal, rows["cold"].is_cold, rows["lost"].is_lost) == (True, True, True, True)
    with n.session() as s:
        assert stored_pipeline(s).rules.cold_after_days == 45  # what every other process reads
    assert n.load_campaigns(campaigns, TEMPLATES_DIR).stages_added == []


def test_a_stage_with_leads_in_it_cannot_be_removed(leads):
    n = leads
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "olga@example.com")).one()
        lead.stage = "negotiation"
        s.commit()
    data = document()
    data["stages"] = [s for s in data["stages"] if s["key"] != "negotiation"]
    stage(data, "proposal")["next"] = "won"
    config = load_pipeline(write(n.tmp_path, data))
    with n.session() as s, pytest.raises(SequenceFileError, match=r"negotiation would be removed but leads are in them \(1 in negotiation\)"):
        sync_pipeline(s, config, n.now)
    assert n.count(Stage) == 10


def test_pipeline_check_prints_ok_or_one_error_line(nurture, tmp_path):
    n = nurture
    ok = n.cli("pipeline", "check", check=True)
    assert "new -> contacted -> engaged -> qualified -> proposal -> negotiation -> won" in ok.stdout
    data = document()
    data["rules"]["first_send"] = "contactd"
    bad = n.cli("pipeline", "check", str(write(tmp_path, data)))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"error: {tmp_path / 'pipeline.yaml'}: rules.first_send: 'contactd' is not a stage (did you mean 'contacted'?)"


def test_leads_stage_moves_a_lead_by_hand_and_checks_what_it_is_given(leads):
    n = leads
    ok = n.cli("leads", "stage", "Olga@Example.com", "qualified", "--note", "звонок прошёл хорошо",
               "--by", "anna.sales@example.com", check=True)
    assert ok.stdout.strip() == "olga@example.com: new -> qualified"
    (change,) = n.all(select(StageChange))
    anna = n.scalar(select(User.id).where(User.email == "anna.sales@example.com"))
    assert (change.reason, change.by_user_id, change.note) == ("manual", anna, "звонок прошёл хорошо")
    assert n.lead("olga@example.com").stage_source == "manual"
    lost = n.cli("leads", "stage", "olga@example.com", "lost")
    assert lost.returncode == 1
    assert lost.stderr.strip() == "error: moving to lost needs a lost reason: one of price, timing, no_budget, competitor, no_need, no_answer"
    unknown = n.cli("leads", "stage", "olga@example.com", "signed")
    assert "error: unknown stage 'signed'; the stages are: new, contacted" in unknown.stderr
    assert "is not a user" in n.cli("leads", "stage", "olga@example.com", "won", "--by", "nobody@example.com").stderr
    assert "no lead with email" in n.cli("leads", "stage", "nobody@example.com", "won").stderr
    assert n.count(StageChange) == 1
    won = n.cli("leads", "stage", "olga@example.com", "won", "--value", "125000", check=True)
    assert won.stdout.strip() == "olga@example.com: qualified -> won, deal value 125000"
    assert n.lead("olga@example.com").deal_value == 125000
    assert n.cli("leads", "stage", "john@example.net", "lost", "--reason", "price", check=True).stdout.strip() == \
        "john@example.net: new -> lost (price)"
    assert n.lead("john@example.net").lost_reason == "price"
    stats = json.loads(n.cli("pipeline", "stats", "--json", check=True).stdout)
    rows = {row["key"]: row for row in stats["stages"]}
    assert (rows["qualified"]["entered"], rows["qualified"]["exits"], rows["qualified"]["learned"]) == (1, 1, 1.0)
    assert rows["new"]["learned"] == pytest.approx(0.5)  # one of the two leads that left new was won
    table = n.cli("pipeline", "stats", check=True).stdout
    assert "manual" in table and "learned" in table and "blended" in table
