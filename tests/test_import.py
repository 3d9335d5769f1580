"""CSV lead import: formats, header synonyms, merging, and rejects that say line and reason."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from sqlmodel import select

from nurture.errors import ImportFileError
from nurture.models import Lead, LeadTag


def tags_of(nurture, email: str) -> set[str]:
    lead = nurture.lead(email)
    return set(nurture.all(select(LeadTag.tag).where(LeadTag.lead_id == lead.id)))


def validator_reason(address: str) -> str:
    with pytest.raises(EmailNotValidError) as info:
        validate_email(address, check_deliverability=False, allow_smtputf8=False)
    return str(info.value)


def test_comma_separated_file_is_imported(team):
    report = team.import_csv(
        "email,first_name,last_name,company,timezone,owner\n"
        "john@example.net,John,Smith,Acme,America/Los_Angeles,ivan.sales@example.com\n"
        "emma@example.co.uk,Emma,Brown,\"Brown, Sons & Co\",Europe/London,\n"
    )
    assert (report.rows, report.created, report.updated, report.rejected) == (2, 2, 0, [])
    john = team.lead("john@example.net")
    assert (john.first_name, john.last_name, john.company, john.timezone) == ("John", "Smith", "Acme", "America/Los_Angeles")
    assert john.owner_id == team.users["ivan.sales@example.com"]
    assert john.language == "en" and john.status == "active" and john.stage == "new"
    assert team.lead("emma@example.co.uk").company == "Brown, Sons & Co"


def test_semicolon_separated_file_is_imported(team):
    report = team.import_csv(
        "email;first_name;company;tags\n"
        "olga@example.com;Ольга;ООО \"Ромашка\";webinar\n"
        "petr@example.org;Пётр;Вектор, АО;\n"
    )
    assert (report.created, report.rejected) == (2, [])
    assert team.lead("olga@example.com").company == 'ООО "Ромашка"'
    assert team.lead("petr@example.org").company == "Вектор, АО"


def test_utf8_file_with_bom_maps_its_first_column(team):
    data = "email;first_name\nolga@example.com;Ольга\n".encode("utf-8-sig")
    assert data.startswith(b"\xef\xbb\xbf")
    report = team.import_csv(data)
    assert (report.created, report.rejected) == (1, [])
    assert team.lead("olga@example.com").first_name == "Ольга"


def test_russian_and_english_header_synonyms_are_recognised(team):
    report = team.import_csv(
        "Почта;Имя;Фамилия;Компания;Часовой пояс;Ответственный;Теги\n"
        "olga@example.com;Ольга;Иванова;Ромашка;Europe/Moscow;anna.sales@example.com;выставка\n"
    )
    assert (report.created, report.rejected) == (1, [])
    olga = team.lead("olga@example.com")
    assert (olga.first_name, olga.last_name, olga.company, olga.timezone) == ("Ольга", "Иванова", "Ромашка", "Europe/Moscow")
    assert olga.owner_id == team.users["anna.sales@example.com"]
    assert olga.custom == {}
    assert tags_of(team, "olga@example.com") == {"выставка"}

    report = team.import_csv("E-mail Address,First Name,Surname,Organization\njohn@example.net,John,Smith,Acme\n")
    assert (report.created, report.rejected) == (1, [])
    john = team.lead("john@example.net")
    assert (john.first_name, john.last_name, john.company) == ("John", "Smith", "Acme")


def test_extra_columns_are_kept_as_custom_fields(team):
    team.import_csv("email;first_name;Город;Industry\nolga@example.com;Ольга;Москва;Logistics\n")
    assert team.lead("olga@example.com").custom == {"Город": "Москва", "Industry": "Logistics"}


def test_tags_are_split_on_commas_and_semicolons(team):
    report = team.import_csv('email,tags\njohn@example.net,"webinar, pricing;2026"\n', extra_tags=["import-march"])
    assert report.created == 1
    assert tags_of(team, "john@example.net") == {"webinar", "pricing", "2026", "import-march"}


def test_duplicate_rows_are_merged_into_one_lead(team):
    report = team.import_csv(
        "email,first_name,company,tags,city\n"
        "John@Example.net,John,,webinar,Boston\n"
        "john@example.net,,Acme,pricing,\n"
        "JOHN@EXAMPLE.NET,Johnny,,,\n"
    )
    assert (report.rows, report.created, report.merged, report.rejected) == (3, 1, 2, [])
    assert team.count(Lead) == 1
    john = team.lead("john@example.net")
    assert (john.first_name, john.company) == ("Johnny", "Acme")  # later non-empty values win
    assert john.custom == {"city": "Boston"}
    assert tags_of(team, "john@example.net") == {"webinar", "pricing"}


def test_reimport_updates_leads_instead_of_duplicating_them(team):
    first = team.import_csv("email,first_name,company,tags,city\njohn@example.net,John,Acme,webinar,Boston\n")
    lead_id = team.lead("john@example.net").id
    team.advance(days=1)
    second = team.import_csv("email,company,tags,phone\njohn@example.net,Acme Corp,pricing,+1 555 0100\n")
    assert (first.created, first.updated) == (1, 0)
    assert (second.created, second.updated) == (0, 1)
    assert team.count(Lead) == 1
    john = team.lead("john@example.net")
    assert john.id == lead_id
    assert (john.first_name, john.company) == ("John", "Acme Corp")  # an absent column keeps the old value
    assert john.custom == {"city": "Boston", "phone": "+1 555 0100"}
    assert john.updated_at == team.now
    assert tags_of(team, "john@example.net") == {"webinar", "pricing"}


def test_rejects_carry_the_line_number_and_email_validator_reason(team):
    report = team.import_csv(
        "email,first_name,notes\n"
        "good@example.com,Good,\"a note\nover two lines\"\n"
        "no-at-sign,Bad,\n"
        "\n"
        "x@@example.com,Worse,\n"
        ",Nobody,\n"
        "ok@example.com,Ok,\n"
    )
    assert report.created == 2
    assert [(r.line, r.reason) for r in report.rejected] == [
        (4, f"email 'no-at-sign': {validator_reason('no-at-sign')}"),
        (6, f"email 'x@@example.com': {validator_reason('x@@example.com')}"),
        (7, "email is empty"),
    ]
    assert report.rejected[0].row == {"email": "no-at-sign", "first_name": "Bad", "notes": ""}
    assert "@-sign" in report.rejected[0].reason


def test_non_ascii_local_part_is_rejected_with_the_validator_reason(team):
    report = team.import_csv("email\nиван@пример.рф\n")
    assert report.created == 0
    assert report.rejected[0].line == 2
    assert validator_reason("иван@пример.рф") in report.rejected[0].reason


def test_unknown_time_zone_is_rejected(team):
    report = team.import_csv("email,timezone\na@example.com,Mars/Olympus_Mons\nb@example.com,Europe/Berlin\n")
    assert report.created == 1
    assert [(r.line, r.reason) for r in report.rejected] == [(2, "unknown time zone 'Mars/Olympus_Mons'")]


def test_unknown_owner_is_rejected_and_named(team):
    report = team.import_csv("email,owner\na@example.com,stranger@example.com\nb@example.com,ANNA.SALES@example.com\n")
    assert report.created == 1
    assert report.rejected[0].line == 2
    assert "owner 'stranger@example.com' is not a user" in report.rejected[0].reason
    assert team.lead("b@example.com").owner_id == team.users["anna.sales@example.com"]


def test_huge_field_is_rejected_with_the_limit_named(team):
    huge = "Я" * 100_000
    report = team.import_csv(f"email;first_name;notes\nbig@example.com;{huge};\nsmall@example.com;Ok;{'n' * 3000}\nok@example.com;Ok;\n")
    assert report.created == 1
    assert [(r.line, r.reason) for r in report.rejected] == [
        (2, "first_name is 100000 characters; at most 200"),
        (3, "column 'notes' is 3000 characters; at most 2000"),
    ]
    assert team.count(Lead) == 1


def test_unclosed_quote_names_the_line_and_writes_nothing(team):
    team.import_csv("email\nkeep@example.com\n")
    with pytest.raises(ImportFileError) as info:
        team.import_csv(
            "email,first_name\n"
            "a@example.com,Ann\n"
            "b@example.com,\"Bob\n"
            "c@example.com,Cy\n"
            "d@example.com,Di\n"
        )
    message = str(info.value)
    assert "malformed CSV" in message
    # The record that opens the quote starts on line 3; that is the line to fix.
    assert message.startswith("line 3:"), message
    assert [lead.email for lead in team.all(select(Lead))] == ["keep@example.com"]


def test_stray_quote_names_its_line_and_writes_nothing(team):
    with pytest.raises(ImportFileError) as info:
        team.import_csv('email,first_name\na@example.com,Ann\nb@example.com,"Bob"x\nc@example.com,Cy\n')
    assert str(info.value).startswith("line 3: malformed CSV")
    assert team.count(Lead) == 0


def test_cp1251_file_is_refused_with_a_hint_and_imports_with_the_encoding(team):
    data = "email;first_name;company\nolga@example.com;Ольга;Ромашка\n".encode("cp1251")
    with pytest.raises(ImportFileError) as info:
        team.import_csv(data)
    message = str(info.value)
    assert message.startswith("line 1: not UTF-8") or message.startswith("line 2: not UTF-8"), message
    assert "Windows-1251" in message and "--encoding cp1251" in message
    assert team.count(Lead) == 0

    report = team.import_csv(data, encoding="cp1251")
    assert report.created == 1
    assert team.lead("olga@example.com").first_name == "Ольга"


def test_bad_utf8_names_the_line(team):
    data = b"email,first_name\na@example.com,Ann\nb@example.com,\xff\xfe\n"
    with pytest.raises(ImportFileError) as info:
        team.import_csv(data)
    assert str(info.value).startswith("line 3: not UTF-8 (byte 0xff)")
    assert team.count(Lead) == 0


def test_file_without_valid_rows_changes_nothing(team):
    team.import_csv("email,first_name\nkeep@example.com,Keep\n")
    before = [(lead.email, lead.first_name, lead.updated_at) for lead in team.all(select(Lead))]
    report = team.import_csv("email,first_name\nnot-an-email,X\n,Y\nkeep@example.com,Changed,extra-field\n")
    assert (report.created, report.updated, len(report.rejected)) == (0, 0, 3)
    assert [(lead.email, lead.first_name, lead.updated_at) for lead in team.all(select(Lead))] == before


def test_file_without_email_column_is_refused(team):
    with pytest.raises(ImportFileError) as info:
        team.import_csv("name,company\nJohn,Acme\n")
    assert "no email column" in str(info.value)


def test_cyrillic_names_are_stored_and_make_the_lead_russian(team):
    team.import_csv("email,first_name,last_name,company\nolga@example.com,Ольга,Иванова-Щукина,Ёлка\njohn@example.net,John,Smith,\n")
    olga = team.lead("olga@example.com")
    assert (olga.first_name, olga.last_name, olga.company, olga.language) == ("Ольга", "Иванова-Щукина", "Ёлка", "ru")
    assert team.lead("john@example.net").language == "en"


def test_idn_domain_address_is_accepted_and_normalised(team):
    report = team.import_csv("email,first_name\nIvan@Пример.РФ,Иван\n")
    assert (report.created, report.rejected) == (1, [])
    lead = team.lead("ivan@пример.рф")
    assert lead.first_name == "Иван"
    # Imported again in punycode-free, differently cased form: the same lead.
    assert team.import_csv("email\nivan@ПРИМЕР.рф\n").updated == 1
    assert team.count(Lead) == 1


def test_tab_separated_file_is_imported(team):
    report = team.import_csv("email\tfirst_name\tcompany\njohn@example.net\tJohn\tAcme, Inc.\n")
    assert (report.created, report.rejected) == (1, [])
    assert team.lead("john@example.net").company == "Acme, Inc."
