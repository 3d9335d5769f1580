"""Settings from ``NURTURE_*`` environment variables, checked once at start.

``Settings.from_env()`` is the only reader of the environment; everything else
receives a ``Settings``. Defaults are safe for development (a SQLite file in the
current folder, the local Redis, an SMTP catcher on port 1025). Outside
``NURTURE_ENV=dev`` a default or short secret key is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from .clock import Clock, parse_instant
from .errors import ConfigError

DEV_SECRET_KEY = "dev-secret-key-change-me"
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # campaigns/ and templates/ live here
MAX_PROXY_HOPS = 5


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to hand mail over: parsed from ``NURTURE_SMTP_URL``.

    ``smtp://user:pass@host:587?starttls=true`` upgrades with STARTTLS,
    ``smtps://host:465`` uses implicit TLS, plain ``smtp://host:25`` neither.
    ``?timeout=SECONDS`` sets the socket timeout (default 30).
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    implicit_tls: bool = False
    starttls: bool = False
    timeout: float = 30.0

    @classmethod
    def from_url(cls, url: str) -> "SmtpSettings":
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ConfigError(f"NURTURE_SMTP_URL: scheme must be smtp:// or smtps://, got {url!r}")
        if not parts.hostname:
            raise ConfigError(f"NURTURE_SMTP_URL: no host in {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"starttls", "timeout"}
        if unknown:
            raise ConfigError(f"NURTURE_SMTP_URL: unknown option(s) {', '.join(sorted(unknown))} (known: starttls, timeout)")
        starttls = query.get("starttls", "false").lower() in ("1", "true", "yes")
        try:
            timeout = float(query.get("timeout", "30"))
            port = parts.port or (465 if parts.scheme == "smtps" else 25)
        except ValueError as exc:
            raise ConfigError(f"NURTURE_SMTP_URL: {exc}") from None
        if parts.scheme == "smtps" and starttls:
            raise ConfigError("NURTURE_SMTP_URL: smtps:// is already TLS; drop ?starttls")
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=parts.scheme == "smtps",
            starttls=starttls,
            timeout=timeout,
        )


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the environment variable named on each field."""

    env: str = "dev"  # NURTURE_ENV: dev | production
    database_url: str = "sqlite:///nurture.db"  # NURTURE_DATABASE_URL
    redis_url: str = "redis://127.0.0.1:6379/0"  # NURTURE_REDIS_URL
    smtp: SmtpSettings = field(default_factory=lambda: SmtpSettings("127.0.0.1", 1025))  # NURTURE_SMTP_URL
    from_address: str = "nurture@example.com"  # NURTURE_FROM ("Name <addr>" or addr)
    from_name: str = "nurture"
    base_url: str = "http://127.0.0.1:5000"  # NURTURE_BASE_URL: where nurture's own pages are (tracking, unsubscribe)
    site_url: str = "https://example.com"  # NURTURE_SITE_URL: the company's website, where call-to-action links lead
    secret_key: str = DEV_SECRET_KEY  # NURTURE_SECRET_KEY
    postal_address: str = "nurture demo, 1 Example Street, Springfield"  # NURTURE_POSTAL_ADDRESS
    default_timezone: str = "UTC"  # NURTURE_DEFAULT_TIMEZONE: when neither lead nor sequence has one
    default_language: str = "en"  # NURTURE_DEFAULT_LANGUAGE
    queue_name: str = "nurture-send"  # NURTURE_QUEUE
    send_batch_size: int = 200  # NURTURE_SEND_BATCH: messages per RQ job
    claim_batch_size: int = 1000  # NURTURE_CLAIM_BATCH: enrollments claimed per round
    send_chunk: int = 50  # NURTURE_SEND_CHUNK: messages claimed per commit (the attempt journal keeps crashes exact)
    lease_seconds: int = 600  # NURTURE_LEASE_SECONDS: how long queued work belongs to one worker
    max_attempts: int = 5  # NURTURE_MAX_ATTEMPTS: SMTP 4xx retries before giving up
    campaigns_dir: str = str(PROJECT_ROOT / "campaigns")  # NURTURE_CAMPAIGNS_DIR
    templates_dir: str = str(PROJECT_ROOT / "templates" / "email")  # NURTURE_TEMPLATES_DIR
    catcher_dir: str | None = None  # NURTURE_CATCHER_DIR: the demo's caught mail, shown at /caught
    imap_url: str | None = None  # NURTURE_IMAP_URL: imaps://user:pass@host:993/INBOX, the mailbox replies reach
    imap_poll_seconds: int = 60  # NURTURE_IMAP_POLL_SECONDS: how often the scheduler polls it
    inbound_secret: str | None = None  # NURTURE_INBOUND_SECRET: shared secret of POST /inbound/raw
    reply_address: str | None = None  # NURTURE_REPLY_ADDRESS: replies@domain -> Reply-To: replies+TOKEN@domain
    auto_reply_pause_days: int = 7  # NURTURE_AUTO_REPLY_PAUSE_DAYS: pause after an out-of-office with no date
    soft_bounce_limit: int = 3  # NURTURE_SOFT_BOUNCE_LIMIT: soft bounces before an address is suppressed
    score_half_life_days: float = 14.0  # NURTURE_SCORE_HALF_LIFE_DAYS: an engagement counts half after this many days
    warm_threshold: float = 0.3  # NURTURE_WARM_THRESHOLD: a lead whose close probability crosses this is warm (0..1)
    warm_rise_points: float = 10.0  # NURTURE_WARM_RISE_POINTS: ... or whose probability rises more than this in a day
    min_closed_for_fit: int = 30  # NURTURE_MIN_CLOSED_FOR_FIT: won + lost leads needed before weights are fitted
    warm_notice_days: int = 3  # NURTURE_WARM_NOTICE_DAYS: at most one warm-up notice per lead this often (a reply always notifies)
    slack_webhook_url: str | None = None  # NURTURE_SLACK_WEBHOOK_URL: Slack-compatible incoming webhook for reps without their own
    webhook_url: str | None = None  # NURTURE_WEBHOOK_URL: generic JSON webhook, signed with NURTURE_WEBHOOK_SECRET
    webhook_secret: str | None = None  # NURTURE_WEBHOOK_SECRET: HMAC-SHA256 key of X-Nurture-Signature
    webhook_retry_intervals: tuple[int, ...] = (10, 60, 300, 1800)  # NURTURE_WEBHOOK_RETRY_INTERVALS: seconds, comma-separated
    stuck_days: int = 30  # NURTURE_STUCK_DAYS: time-in-stage limit while a stage has too little history for its p90
    review_at: tuple[int, int, int] = (4, 16, 0)  # NURTURE_REVIEW_AT: "fri 16:00" (default zone): the weekly review's moment
    refusal_after: str = "re_offer"  # NURTURE_REFUSAL_AFTER: archive | re_offer, for a lead silent after the follow-up after refusal
    refusal_silence_days: int = 14  # NURTURE_REFUSAL_SILENCE_DAYS: days without an answer after its last letter
    reps_see_all_leads: bool = False  # NURTURE_REPS_SEE_ALL_LEADS: reps see every lead in the admin, not only their own
    proxy_hops: int = 0  # NURTURE_PROXY_HOPS: reverse proxies in front of the web app whose X-Forwarded-* to trust
    ab_auto_promote: bool = False  # NURTURE_AB_AUTO_PROMOTE: new sends of a step use its declared A/B winner (nurture steps --promote)
    clock: Clock = field(default_factory=Clock.system)  # NURTURE_NOW or NURTURE_CLOCK_*

    @property
    def is_dev(self) -> bool:
        return self.env == "dev"

    @property
    def mail_domain(self) -> str:
        return self.from_address.rpartition("@")[2]

    def with_now(self, now: str | None) -> "Settings":
        """A copy whose clock is fixed at ``now`` (an ISO-8601 text), or self."""
        if not now:
            return self
        return replace(self, clock=Clock.fixed(parse_instant(now, "--now")))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        get = env.get
        kwargs: dict = {}
        simple = {
            "NURTURE_ENV": "env",
            "NURTURE_DATABASE_URL": "database_url",
            "NURTURE_REDIS_URL": "redis_url",
            "NURTURE_BASE_URL": "base_url",
            "NURTURE_SITE_URL": "site_url",
            "NURTURE_SECRET_KEY": "secret_key",
            "NURTURE_POSTAL_ADDRESS": "postal_address",
            "NURTURE_DEFAULT_TIMEZONE": "default_timezone",
            "NURTURE_DEFAULT_LANGUAGE": "default_language",
            "NURTURE_QUEUE": "queue_name",
            "NURTURE_CAMPAIGNS_DIR": "campaigns_dir",
            "NURTURE_TEMPLATES_DIR": "templates_dir",
            "NURTURE_CATCHER_DIR": "catcher_dir",
            "NURTURE_IMAP_URL": "imap_url",
            "NURTURE_INBOUND_SECRET": "inbound_secret",
            "NURTURE_REPLY_ADDRESS": "reply_address",
            "NURTURE_SLACK_WEBHOOK_URL": "slack_webhook_url",
            "NURTURE_WEBHOOK_URL": "webhook_url",
            "NURTURE_WEBHOOK_SECRET": "webhook_secret",
            "NURTURE_REFUSAL_AFTER": "refusal_after",
        }
        for var, name in simple.items():
            if get(var):
                kwargs[name] = get(var)
        numbers = {
            "NURTURE_SEND_BATCH": "send_batch_size",
            "NURTURE_CLAIM_BATCH": "claim_batch_size",
            "NURTURE_SEND_CHUNK": "send_chunk",
            "NURTURE_LEASE_SECONDS": "lease_seconds",
            "NURTURE_MAX_ATTEMPTS": "max_attempts",
            "NURTURE_IMAP_POLL_SECONDS": "imap_poll_seconds",
            "NURTURE_AUTO_REPLY_PAUSE_DAYS": "auto_reply_pause_days",
            "NURTURE_SOFT_BOUNCE_LIMIT": "soft_bounce_limit",
            "NURTURE_MIN_CLOSED_FOR_FIT": "min_closed_for_fit",
            "NURTURE_WARM_NOTICE_DAYS": "warm_notice_days",
            "NURTURE_STUCK_DAYS": "stuck_days",
            "NURTURE_REFUSAL_SILENCE_DAYS": "refusal_silence_days",
        }
        for var, name in numbers.items():
            if get(var):
                try:
                    kwargs[name] = int(get(var))
                except ValueError:
                    raise ConfigError(f"{var}: {get(var)!r} is not a whole number") from None
                if kwargs[name] < 1:
                    raise ConfigError(f"{var}: must be at least 1")
        if get("NURTURE_REVIEW_AT"):
            kwargs["review_at"] = _parse_review_at(get("NURTURE_REVIEW_AT"))
        if get("NURTURE_WEBHOOK_RETRY_INTERVALS"):
            kwargs["webhook_retry_intervals"] = _parse_intervals(get("NURTURE_WEBHOOK_RETRY_INTERVALS"))
        if get("NURTURE_SMTP_URL"):
            kwargs["smtp"] = SmtpSettings.from_url(get("NURTURE_SMTP_URL"))
        if get("NURTURE_FROM"):
            kwargs["from_name"], kwargs["from_address"] = _parse_from(get("NURTURE_FROM"))
        if get("NURTURE_PROXY_HOPS"):
            kwargs["proxy_hops"] = _parse_proxy_hops(get("NURTURE_PROXY_HOPS"))
        if get("NURTURE_REPS_SEE_ALL_LEADS"):
            kwargs["reps_see_all_leads"] = _parse_switch("NURTURE_REPS_SEE_ALL_LEADS", get("NURTURE_REPS_SEE_ALL_LEADS"))
        if get("NURTURE_AB_AUTO_PROMOTE"):
            kwargs["ab_auto_promote"] = _parse_switch("NURTURE_AB_AUTO_PROMOTE", get("NURTURE_AB_AUTO_PROMOTE"))
        for var, name in (("NURTURE_SCORE_HALF_LIFE_DAYS", "score_half_life_days"),
                          ("NURTURE_WARM_THRESHOLD", "warm_threshold"), ("NURTURE_WARM_RISE_POINTS", "warm_rise_points")):
            if get(var):
                try:
                    kwargs[name] = float(get(var))
                except ValueError:
                    raise ConfigError(f"{var}: {get(var)!r} is not a number") from None
        kwargs["clock"] = _clock_from_env(env)
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        if self.env not in ("dev", "production"):
            raise ConfigError(f"NURTURE_ENV: {self.env!r} must be dev or production")
        if not self.is_dev and (self.secret_key == DEV_SECRET_KEY or len(self.secret_key) < 32):
            raise ConfigError(
                "NURTURE_SECRET_KEY: set a random secret of at least 32 characters outside dev "
                "(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        for name, url in (("NURTURE_BASE_URL", self.base_url), ("NURTURE_SITE_URL", self.site_url)):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name}: {url!r} must start with http:// or https://")
        if self.imap_url and not self.imap_url.startswith(("imap://", "imaps://")):
            raise ConfigError(f"NURTURE_IMAP_URL: {self.imap_url!r} must start with imap:// or imaps://")
        for name, url in (("NURTURE_SLACK_WEBHOOK_URL", self.slack_webhook_url), ("NURTURE_WEBHOOK_URL", self.webhook_url)):
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name}: {url!r} must start with http:// or https://")
        if self.webhook_url and not self.webhook_secret:
            raise ConfigError("NURTURE_WEBHOOK_URL is set: also set NURTURE_WEBHOOK_SECRET (the receiver checks the signature with it)")
        if self.webhook_secret is not None and len(self.webhook_secret) < 16:
            raise ConfigError("NURTURE_WEBHOOK_SECRET: use at least 16 random characters")
        if self.inbound_secret is not None and len(self.inbound_secret) < 16:
            raise ConfigError("NURTURE_INBOUND_SECRET: use at least 16 random characters")
        if self.default_language not in ("en", "ru"):
            raise ConfigError(f"NURTURE_DEFAULT_LANGUAGE: {self.default_language!r} must be en or ru")
        if not 0 < self.score_half_life_days <= 3650:
            raise ConfigError(f"NURTURE_SCORE_HALF_LIFE_DAYS: {self.score_half_life_days:g} must be above 0 and at most 3650")
        if not 0 < self.warm_threshold < 1:
            raise ConfigError(f"NURTURE_WARM_THRESHOLD: {self.warm_threshold:g} must be a probability between 0 and 1 (e.g. 0.3)")
        if not 0 < self.warm_rise_points < 100:
            raise ConfigError(f"NURTURE_WARM_RISE_POINTS: {self.warm_rise_points:g} must be percentage points between 0 and 100")
        if self.refusal_after not in ("archive", "re_offer"):
            raise ConfigError(f"NURTURE_REFUSAL_AFTER: {self.refusal_after!r} must be archive or re_offer")
        try:
            ZoneInfo(self.default_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"NURTURE_DEFAULT_TIMEZONE: unknown time zone {self.default_timezone!r}") from None


def _parse_proxy_hops(text: str) -> int:
    if not text.strip().isdigit() or int(text) > MAX_PROXY_HOPS:
        raise ConfigError(f"NURTURE_PROXY_HOPS: {text!r} must be a whole number from 0 to {MAX_PROXY_HOPS}: "
                          "how many reverse proxies stand in front of the web app (0 when it faces the network)")
    return int(text)


def _parse_from(text: str) -> tuple[str, str]:
    from email.utils import parseaddr

    name, addr = parseaddr(text)
    try:
        addr = validate_email(addr, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ConfigError(f"NURTURE_FROM: {text!r}: {exc}") from None
    return name or addr.partition("@")[0], addr


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _parse_review_at(text: str) -> tuple[int, int, int]:
    """``"fri 16:00"`` -> (4, 16, 0): weekday (Monday 0), hour, minute."""
    day, _, clock = text.strip().lower().partition(" ")
    hour, _, minute = clock.strip().partition(":")
    if day[:3] not in WEEKDAYS or not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ConfigError(f"NURTURE_REVIEW_AT: {text!r} must be a weekday and a time, e.g. 'fri 16:00'")
    return WEEKDAYS.index(day[:3]), int(hour), int(minute)


def _parse_intervals(text: str) -> tuple[int, ...]:
    """``"10,60,300"`` -> (10, 60, 300): the waits before each webhook retry."""
    try:
        intervals = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"NURTURE_WEBHOOK_RETRY_INTERVALS: {text!r} must be whole seconds separated by commas, e.g. 10,60,300") from None
    if any(i < 0 for i in intervals):
        raise ConfigError(f"NURTURE_WEBHOOK_RETRY_INTERVALS: {text!r}: a wait cannot be negative")
    return intervals


def _parse_switch(var: str, text: str) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0) as a bool."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var}: {text!r} must be true or false")


def _clock_from_env(env: dict[str, str]) -> Clock:
    if env.get("NURTURE_NOW"):
        return Clock.fixed(parse_instant(env["NURTURE_NOW"], "NURTURE_NOW"))
    if env.get("NURTURE_CLOCK_START"):
        start = parse_instant(env["NURTURE_CLOCK_START"], "NURTURE_CLOCK_START")
        try:
            speed = float(env.get("NURTURE_CLOCK_SPEED", "1"))
            anchor = float(env["NURTURE_CLOCK_ANCHOR"]) if env.get("NURTURE_CLOCK_ANCHOR") else None
        except ValueError as exc:
            raise ConfigError(f"NURTURE_CLOCK_SPEED / NURTURE_CLOCK_ANCHOR: {exc}") from None
        return Clock.sped_up(start, speed, anchor)
    return Clock.system()
