"""Settings from NURTURE_* variables: unsafe or malformed values are refused with the variable named."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nurture.config import DEV_SECRET_KEY, Settings, SmtpSettings
from nurture.errors import ConfigError

GOOD_SECRET = "x" * 40


def test_defaults_are_fine_for_development():
    settings = Settings.from_env({})
    assert settings.is_dev and settings.secret_key == DEV_SECRET_KEY
    assert (settings.smtp.host, settings.smtp.port) == ("127.0.0.1", 1025)


@pytest.mark.parametrize("secret", [None, DEV_SECRET_KEY, "short-secret"])
def test_production_refuses_the_default_or_a_short_secret_key(secret):
    env = {"NURTURE_ENV": "production"}
    if secret:
        env["NURTURE_SECRET_KEY"] = secret
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith("NURTURE_SECRET_KEY: set a random secret of at least 32 characters")


def test_production_accepts_a_long_random_secret():
    settings = Settings.from_env({"NURTURE_ENV": "production", "NURTURE_SECRET_KEY": GOOD_SECRET})
    assert not settings.is_dev and settings.secret_key == GOOD_SECRET


def test_unknown_environment_name_is_refused():
    with pytest.raises(ConfigError, match="NURTURE_ENV: 'prod' must be dev or production"):
        Settings.from_env({"NURTURE_ENV": "prod"})


@pytest.mark.parametrize("url, fragment", [
    ("http://mail.example.com", "scheme must be smtp:// or smtps://"),
    ("mail.example.com:25", "scheme must be smtp:// or smtps://"),
    ("smtp://", "no host in"),
    ("smtp://:25", "no host in"),
    ("smtp://mail.example.com:port", "NURTURE_SMTP_URL:"),
    ("smtp://mail.example.com:99999", "NURTURE_SMTP_URL:"),
    ("smtp://mail.example.com?tls=true", "unknown option(s) tls (known: starttls, timeout)"),
    ("smtp://mail.example.com?timeout=soon", "NURTURE_SMTP_URL:"),
    ("smtps://mail.example.com?starttls=true", "smtps:// is already TLS; drop ?starttls"),
])
def test_bad_smtp_url_is_refused_with_a_reason(url, fragment):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"NURTURE_SMTP_URL": url})
    message = str(info.value)
    assert message.startswith("NURTURE_SMTP_URL: ") and fragment in message


def test_smtps_url_means_implicit_tls_on_465_with_decoded_credentials():
    smtp = SmtpSettings.from_url("smtps://mailer%40example.com:p%40ss%3Aword@smtp.example.com")
    assert (smtp.host, smtp.port, smtp.implicit_tls, smtp.starttls) == ("smtp.example.com", 465, True, False)
    assert (smtp.username, smtp.password) == ("mailer@example.com", "p@ss:word")


def test_starttls_option_upgrades_a_plain_connection():
    smtp = SmtpSettings.from_url("smtp://user:secret@smtp.example.com:587?starttls=true&timeout=7.5")
    assert (smtp.host, smtp.port, smtp.implicit_tls, smtp.starttls, smtp.timeout) == (
        "smtp.example.com", 587, False, True, 7.5)
    assert (smtp.username, smtp.password) == ("user", "secret")
    assert SmtpSettings.from_url("smtp://smtp.example.com:587?starttls=no").starttls is False


def test_plain_smtp_url_defaults_to_port_25_without_tls():
    smtp = SmtpSettings.from_url("smtp://relay.internal")
    assert (smtp.port, smtp.implicit_tls, smtp.starttls, smtp.username, smtp.timeout) == (25, False, False, None, 30.0)


@pytest.mark.parametrize("var, value, message", [
    ("NURTURE_SEND_BATCH", "many", "NURTURE_SEND_BATCH: 'many' is not a whole number"),
    ("NURTURE_MAX_ATTEMPTS", "0", "NURTURE_MAX_ATTEMPTS: must be at least 1"),
    ("NURTURE_BASE_URL", "nurture.example.com", "NURTURE_BASE_URL: 'nurture.example.com' must start with http:// or https://"),
    ("NURTURE_DEFAULT_TIMEZONE", "Moscow", "NURTURE_DEFAULT_TIMEZONE: unknown time zone 'Moscow'"),
    ("NURTURE_DEFAULT_LANGUAGE", "de", "NURTURE_DEFAULT_LANGUAGE: 'de' must be en or ru"),
    ("NURTURE_NOW", "yesterday", "NURTURE_NOW: 'yesterday' is not an ISO-8601 time"),
])
def test_malformed_settings_name_their_variable(var, value, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})
    assert str(info.value).startswith(message)


def test_from_address_with_a_cyrillic_display_name():
    settings = Settings.from_env({"NURTURE_FROM": "Отдел продаж <Sales@Example.com>"})
    assert (settings.from_name, settings.from_address.lower(), settings.mail_domain) == ("Отдел продаж", "sales@example.com", "example.com")
    with pytest.raises(ConfigError, match="NURTURE_FROM"):
        Settings.from_env({"NURTURE_FROM": "Sales <not-an-address>"})


def test_fixed_clock_from_nurture_now_and_with_now():
    settings = Settings.from_env({"NURTURE_NOW": "2026-03-02T10:00:00+03:00"})
    assert settings.clock.now() == datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
    later = settings.with_now("2026-03-03T12:00:00Z")
    assert later.clock.now() == datetime(2026, 3, 3, 12, 0, tzinfo=timezone.utc)
    assert settings.clock.now() == datetime(2026, 3, 2, 7, 0, tzinfo=timezone.utc)
    assert settings.with_now(None) is settings
