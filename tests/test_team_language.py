"""Emails to the team in each user's language: warm-up notices, digests, explanations; setting the language."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from email.header import decode_header, make_header

from sqlmodel import select

from nurture.models import Event, Lead, Notification, User
from nurture.probability import ProbabilityChange, describe, explain
from nurture.warmup import detect
from nurture.webhooks import slack_message
from nurture.weekly_review import run_weekly_review

from admin_support import logged_in, post_form
from conftest import ANNA, IVAN, received_by
from pipeline_history import add_lead

NOW = datetime(2026, 3, 30, 9, 0, tzinfo=timezone.utc)  # a Monday


def speaks(n, email: str, language: str) -> None:
    with n.session() as s:
        user = s.exec(select(User).where(User.email == email)).one()
        user.language = language
        s.add(user)
        s.commit()


def why(now: datetime) -> list[dict]:
    """Contributions as ``nurture.probability`` stores them: 22 + 9 + 3 = 34 %."""
    return [{"factor": "stage", "stage": "engaged", "points": 22},
            {"factor": "reply", "points": 9, "at": (now - timedelta(days=2)).isoformat()},
            {"factor": "open", "points": 3, "count": 5, "at": (now - timedelta(days=5)).isoformat()}]


def warms_up(n, email: str) -> None:
    """Warm-up detection sees the lead's probability cross the 30 % threshold (20 % -> 34 %), then commits."""
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        lead.probability, lead.probability_why = 0.34, why(n.now)
        s.add(lead)
        s.add(Event(lead_id=lead.id, kind="open", occurred_at=n.now - timedelta(hours=1)))
        s.flush()
        found = detect(s, n.settings, [ProbabilityChange(lead.id, 0.2, 0.34, why(n.now))], n.now)
        s.commit()
    assert [w.notified for w in found] == [True]


def body(mail, kind: str = "plain") -> str:
    """A part's text with plain newlines (the SMTP policy writes CRLF)."""
    return mail.get_body((kind,)).get_content().replace("\r\n", "\n")


def raw_subject(raw: bytes) -> str:
    headers = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")  # a header with raw UTF-8 would not decode
    return next(line for line in headers.replace("\r\n ", " ").split("\r\n") if line.startswith("Subject: "))


def test_a_russian_reps_warm_up_notice_arrives_in_russian(leads):
    speaks(leads, ANNA, "ru")
    warms_up(leads, "olga@example.com")
    leads.work()
    [(_, rcpts, raw)] = leads.smtp.messages
    assert rcpts == [ANNA]
    subject = raw_subject(raw)
    assert "=?utf-8?" in subject.lower(), "RFC 2047 encoded"
    expected = 'Тёплый лид: Ольга Иванова (ООО "Ромашка"), 34%'
    assert str(make_header(decode_header(subject.removeprefix("Subject: ")))) == expected
    [mail] = leads.smtp.parsed()
    assert mail["Subject"] == expected
    text = body(mail)
    assert text.startswith("Добрый день, Анна Соколова!\n\nЛид Ольга Иванова (ООО \"Ромашка\") проявляет интерес.\n")
    assert ("Что произошло: вероятность сделки достигла порога 30% (20% → 34%): 34%: этап engaged — 22%, "
            "ответ 2 дня назад +9, 5 открытий, последнее 5 дней назад +3\n") in text
    assert "Вероятность сделки: 34% (этап new)\n  - этап engaged — 22%\n  - ответ 2 дня назад +9\n" in text
    assert "открытие письма" in text and f"Карточка лида: {leads.settings.base_url}/leads/" in text
    assert not any(word in text for word in ("Hello", "stage", "replied", "probability", "Last events"))
    html = body(mail, "html")
    assert "Открыть карточку лида" in html and "<li>5 открытий, последнее 5 дней назад +3</li>" in html
    assert "(ООО &#34;Ромашка&#34;) проявляет интерес." in html or "(ООО &quot;Ромашка&quot;) проявляет интерес." in html
    notice = leads.scalar(select(Notification))
    assert notice.payload["language"] == "ru" and notice.status == "sent"
    assert notice.reason.startswith("close probability crossed 30% (20% → 34%): 34%: stage engaged 22%"), \
        "the row, read in the admin, keeps the English"


def test_an_english_reps_warm_up_notice_is_unchanged(leads):
    warms_up(leads, "john@example.net")
    leads.work()
    [mail] = leads.smtp.parsed()
    assert mail["To"].addresses[0].addr_spec == IVAN
    assert mail["Subject"] == "Warm lead: John Smith (Acme Corp), 34%"
    text = body(mail)
    assert text.startswith("Hello Ivan Petrov,\n\nJohn Smith (Acme Corp) is warming up: close probability crossed 30% "
                           "(20% → 34%): 34%: stage engaged 22%, replied 2 days ago +9, opened 5 times, last 5 days ago +3\n")
    assert "Close probability: 34% (stage new)\n  - stage engaged 22%\n  - replied 2 days ago +9\n" in text
    assert "Last events:\n  2026-03-02 06:00  open\n" in text
    assert "<strong>John Smith</strong> (Acme Corp) is warming up: close probability crossed 30%" in body(mail, "html")
    assert text.endswith("Now is a good moment to get in touch.\n-- nurture\n")


def test_an_unknown_language_gets_english(leads):
    speaks(leads, ANNA, "de")
    warms_up(leads, "olga@example.com")
    leads.work()
    [mail] = leads.smtp.parsed()
    assert mail["Subject"] == 'Warm lead: Ольга Иванова (ООО "Ромашка"), 34%'
    assert "stage engaged 22%" in body(mail)


def test_the_slack_message_follows_the_notices_language(leads):
    speaks(leads, ANNA, "ru")
    warms_up(leads, "olga@example.com")
    payload = leads.scalar(select(Notification)).payload
    message = slack_message(payload)
    assert message["blocks"][0]["text"]["text"] == 'Тёплый лид: Ольга Иванова (ООО "Ромашка"), 34%'
    fields = [field["text"] for field in message["blocks"][2]["fields"]]
    assert fields[0] == "*Этап*\nnew" and fields[3] == "*Менеджер*\nАнна Соколова"
    assert "открытие письма" in message["blocks"][3]["text"]["text"]
    assert message["blocks"][4]["elements"][0]["text"]["text"] == "Открыть карточку лида"


def test_russian_plural_forms_of_days_and_counts():
    def ago(days: int, count: int = 1) -> str:
        return describe({"factor": "reply", "points": 9, "count": count, "at": (NOW - timedelta(days=days)).isoformat()},
                        NOW, "ru")

    assert [ago(d) for d in (0, 1, 2, 4, 5, 11, 21, 22, 25, 101)] == [
        "ответ сегодня +9", "ответ вчера +9", "ответ 2 дня назад +9", "ответ 4 дня назад +9", "ответ 5 дней назад +9",
        "ответ 11 дней назад +9", "ответ 21 день назад +9", "ответ 22 дня назад +9", "ответ 25 дней назад +9",
        "ответ 101 день назад +9"]
    assert [ago(3, count) for count in (2, 5, 21)] == [
        "2 ответа, последний 3 дня назад +9", "5 ответов, последний 3 дня назад +9", "21 ответ, последний 3 дня назад +9"]
    clicks = {"factor": "click", "points": 4, "count": 3, "at": NOW.isoformat(), "url": "https://example.org/case-study/"}
    assert describe(clicks, NOW, "ru") == "переход по ссылке example.org/case-study сегодня (3 перехода) +4"
    assert describe({"factor": "machine", "points": -1, "count": 1}, NOW, "ru") == \
        "1 автоматическое открытие или переход -1"
    assert explain(0.12, [], NOW, "ru") == "12%: ещё не рассчитана"
    assert describe(clicks, NOW) == "clicked example.org/case-study today (3 clicks) +4", "English by default"


def test_each_manager_gets_the_funnel_in_their_language(nurture):
    from nurture.analytics.backwards_plan import StepConversion, plan, save_plan

    n = nurture.at(NOW)
    with n.session() as s:
        s.add(User(email="boss@example.com", name="Мария Руководитель", role="manager", language="ru", created_at=NOW))
        s.add(User(email="chief@example.com", name="Carol Chief", role="manager", created_at=NOW))
        for prefix, start, leads, advancing in (("old", NOW - timedelta(days=80), 40, 20), ("new", NOW - timedelta(days=25), 20, 2)):
            for i in range(leads):  # contacted -> engaged: 50 % before, 10 % in the last four weeks
                moved = start + timedelta(days=i % 20)
                add_lead(s, f"{prefix}{i}@example.com", [("new", moved - timedelta(days=2)), ("contacted", moved - timedelta(days=1)),
                                                        ("engaged" if i < advancing else "cold", moved)], commit=False)
        steps = [StepConversion("new", "contacted", 0.9), StepConversion("contacted", "engaged", 0.5)]
        stored = save_plan(s, plan(steps, 10, date(2026, 6, 30), NOW.date() - timedelta(days=14)), {},
                           NOW - timedelta(days=14))
        run_weekly_review(s, n.settings, NOW)
    n.work()
    mail = received_by(n)
    [boss] = mail["boss@example.com"]
    assert boss["Subject"] == "Обзор воронки, неделя 2026-W14"
    text = body(boss)
    assert text.startswith("Добрый день, Мария Руководитель!\n\nОбзор воронки, неделя 2026-W14.\n")
    assert "Узкое место: contacted → engaged, конверсия 10% против 50% по плану, теряем около " in text
    assert f"План №{stored.id}, цель к 2026-06-30 — сделок: 10. С 2026-03-16 пришло новых лидов: 7 из " in text
    assert "отстаём от плана" in text or "идём по плану" in text
    assert "Bottleneck" not in text and "Plan #" not in text
    assert "Узкое место: contacted → engaged" in body(boss, "html")
    [chief] = mail["chief@example.com"]
    assert chief["Subject"] == "Pipeline review 2026-W14"
    assert "Bottleneck: contacted -> engaged converts 10% against 50% (plan), about" in body(chief)


def test_without_movement_the_russian_digest_says_why_there_is_no_bottleneck(nurture):
    n = nurture.at(NOW)
    with n.session() as s:
        s.add(User(email="boss@example.com", name="Мария", role="manager", language="ru", created_at=NOW))
        run_weekly_review(s, n.settings, NOW)
    n.work()
    text = body(received_by(n)["boss@example.com"][0])
    assert ("Узкого места нет: пока мало данных — за последние 28 дн. ни с одного этапа не ушло 10 и более лидов.\n"
            "Плана пока нет: составьте его командой `nurture plan --deals N --by DATE`.\n") in text


def test_a_russian_rep_gets_the_weekly_digest_in_russian(leads):
    speaks(leads, ANNA, "ru")
    with leads.session() as s:
        run_weekly_review(s, leads.settings, leads.now)
    leads.work()
    mail = received_by(leads)
    [anna] = mail[ANNA]
    assert anna["Subject"] == "Ваша неделя 2026-W10: тёплых лидов — 0, зависших — 0"
    text = body(anna)
    assert "Итоги вашей недели 2026-W10." in text and "Тёплые лиды по вероятности сделки (0):\n  на этой неделе нет" in text
    assert mail[IVAN][0]["Subject"] == "Your week 2026-W10: 0 warm, 0 stuck"


def test_users_create_sets_the_language_and_refuses_an_unknown_one(nurture):
    refused = nurture.cli("users", "create", "olga.rep@example.com", "--language", "xx")
    assert refused.returncode == 2
    assert "Invalid value for '--language': 'xx' is not one of 'en', 'ru'." in refused.stderr
    assert nurture.count(User) == 0
    nurture.cli("users", "create", "olga.rep@example.com", "--name", "Ольга", "--language", "ru", check=True)
    nurture.cli("users", "create", "olga.rep@example.com", "--title", "Менеджер по продажам", check=True)
    assert nurture.scalar(select(User.language).where(User.email == "olga.rep@example.com")) == "ru", \
        "an update without --language keeps it"
    nurture.cli("users", "create", "new.rep@example.com", check=True)
    assert nurture.scalar(select(User.language).where(User.email == "new.rep@example.com")) == "en"


def test_the_admin_users_form_sets_the_language_and_refuses_an_unknown_one(nurture, web):
    client = logged_in(nurture, web, "admin@example.com")
    form = {"email": "anna.sales@example.com", "name": "Анна Соколова", "role": "rep", "active": "on"}
    bad = post_form(client, "/admin/users", {**form, "name": "Анна", "language": "xx"})
    page = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert '<p class="error" id="error-language">nurture writes no emails in &#39;xx&#39;: choose one of en, ru</p>' in page
    anna = nurture.scalar(select(User).where(User.email == ANNA))
    assert (anna.language, anna.name) == ("en", "Анна Соколова"), "nothing saved"
    assert post_form(client, "/admin/users", {**form, "language": "ru"}).status_code == 302
    assert nurture.scalar(select(User.language).where(User.email == ANNA)) == "ru"
    editing = client.get(f"/admin/users?edit={anna.id}").get_data(as_text=True)
    assert '<option value="ru" selected>Русский</option>' in editing
    assert post_form(client, "/admin/users", form).status_code == 302, "a form without the field keeps the language"
    assert nurture.scalar(select(User.language).where(User.email == ANNA)) == "ru"
