"""Webhook deliveries to a real HTTP endpoint on loopback: signature, Slack shape, retries on a real RQ worker."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry
from sqlmodel import select

from nurture.models import Lead, Notification, User
from nurture.notifications import delivery_job_id, notify_warm_lead
from nurture.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature, verify_signature

from conftest import ANNA, wait_until

SECRET = "webhook-secret-0123456789abcdef"


class Endpoint:
    """An HTTP server on loopback that records every POST and answers with the next queued status (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: dict[str, list[int]] = {}
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                queued = endpoint.statuses.get(self.path, [])
                status = queued.pop(0) if queued else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"try later")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def endpoint():
    server = Endpoint()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join()


def configure(n, **values) -> None:
    """Set webhook settings for this process and for the RQ jobs (which read the environment)."""
    names = {"webhook_url": "NURTURE_WEBHOOK_URL", "webhook_secret": "NURTURE_WEBHOOK_SECRET",
             "slack_webhook_url": "NURTURE_SLACK_WEBHOOK_URL", "webhook_retry_intervals": "NURTURE_WEBHOOK_RETRY_INTERVALS"}
    for name, value in values.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else value
        n.monkeypatch.setenv(names[name], text)
    n.settings = replace(n.settings, **values)


def warm(n, email: str, **lead_fields) -> list[int]:
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        for name, value in {"probability": 0.34, "probability_why": ["stage engaged 22%", "clicked the case study +3"],
                            **lead_fields}.items():
            setattr(lead, name, value)
        rows = notify_warm_lead(s, n.settings, lead, "probability crossed 30%", n.now)
        s.commit()
        return [r.id for r in rows]


def notification(n, channel: str) -> Notification:
    return n.scalar(select(Notification).where(Notification.channel == channel))


def work_with_scheduler(n) -> None:
    """A real RQ worker in burst mode that also moves due retries out of the scheduled registry."""
    SimpleWorker([n.queue], connection=n.redis, name=f"w-{uuid.uuid4().hex[:8]}").work(
        burst=True, logging_level="ERROR", with_scheduler=True)


def test_generic_webhook_is_signed_over_timestamp_and_raw_body(leads, endpoint):
    configure(leads, webhook_url=endpoint.url("/hook"), webhook_secret=SECRET)
    ids = warm(leads, "olga@example.com")
    leads.work()
    [request] = endpoint.posts("/hook")
    headers, body = request["headers"], request["body"]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert headers[SIGNATURE_HEADER] == signature(SECRET, int(headers[TIMESTAMP_HEADER]), body)
    assert not verify_signature(SECRET, headers[TIMESTAMP_HEADER], body.replace(b"34", b"99"), headers[SIGNATURE_HEADER])
    assert not verify_signature("another-secret-0123456789", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    replayed_later = int(headers[TIMESTAMP_HEADER]) + 3600
    assert not verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], now=replayed_later)
    document = json.loads(body)
    assert int(headers[DELIVERY_HEADER]) == document["id"] and document["id"] in ids
    assert document["event"] == "lead.warm_up" and document["kind"] == "warm_up"
    assert document["lead"]["name"] == "Ольга Иванова" and "Ольга".encode() in body  # UTF-8, not \\u escapes
    assert document["lead"]["probability"] == 0.34
    assert document["lead"]["why"] == ["stage engaged 22%", "clicked the case study +3"]
    assert document["rep"]["email"] == ANNA
    assert notification(leads, "webhook").status == "sent"


def test_slack_message_has_the_context_to_act_and_escapes_lead_data(leads, endpoint):
    with leads.session() as s:
        anna = s.exec(select(User).where(User.email == ANNA)).one()
        anna.webhook_url = endpoint.url("/slack/anna")
        s.add(anna)
        s.commit()
    warm(leads, "olga@example.com", company="<!channel> & Co")
    leads.work()
    [request] = endpoint.posts("/slack/anna")
    message = json.loads(request["body"])
    assert set(message) == {"text", "blocks"} and isinstance(message["text"], str)
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "section", "actions"]
    assert "Ольга Иванова" in message["text"] and "34%" in message["text"]
    # mrkdwn and the fallback text are parsed by Slack: escaped; a plain_text header is shown as is
    assert "&lt;!channel&gt; &amp; Co" in message["text"]
    assert message["blocks"][0]["text"] == {"type": "plain_text", "text": "Warm lead: Ольга Иванова (<!channel> & Co), 34%",
                                             "emoji": True}
    parsed = [message["text"]] + [field["text"] for block in message["blocks"][1:4]
                                  for field in [block.get("text")] + block.get("fields", []) if field]
    assert not any("<!channel>" in text for text in parsed)
    reasons = message["blocks"][1]["text"]["text"]
    assert "probability crossed 30%" in reasons and "• clicked the case study +3" in reasons
    button = message["blocks"][4]["elements"][0]
    lead_id = leads.lead("olga@example.com").id
    assert button["url"] == f"{leads.settings.base_url}/leads/{lead_id}"
    assert notification(leads, "slack").status == "sent"


def test_global_slack_webhook_is_used_for_reps_without_their_own(leads, endpoint):
    configure(leads, slack_webhook_url=endpoint.url("/slack/team"))
    warm(leads, "john@example.net")
    leads.work()
    assert len(endpoint.posts("/slack/team")) == 1


def test_failing_endpoint_is_retried_with_backoff_by_a_real_worker_and_logged(leads, endpoint):
    configure(leads, webhook_url=endpoint.url("/hook"), webhook_secret=SECRET, webhook_retry_intervals=(1, 1, 1))
    endpoint.statuses["/hook"] = [500, 503]
    warm(leads, "olga@example.com")
    SimpleWorker([leads.queue], connection=leads.redis).work(burst=True, logging_level="ERROR")  # no scheduler yet
    row = notification(leads, "webhook")
    assert (row.status, row.attempts) == ("pending", 1) and "500" in row.error
    assert ScheduledJobRegistry(queue=leads.queue).get_job_ids() == [delivery_job_id(leads.settings, row.id)], "waits, not at once"

    def delivered():
        work_with_scheduler(leads)
        return notification(leads, "webhook").status == "sent"

    wait_until(delivered, timeout=20, interval=0.2, what="the third attempt")
    row = notification(leads, "webhook")
    assert row.attempts == 3
    assert [line.split(": ", 1)[1][:3] for line in row.error.splitlines()] == ["POS", "POS"]
    assert "500 try later" in row.error.splitlines()[0] and "503 try later" in row.error.splitlines()[1]
    bodies = {r["body"] for r in endpoint.posts("/hook")}
    assert len(endpoint.posts("/hook")) == 3 and len(bodies) == 1, "the same delivery each time"


def test_delivery_fails_for_good_after_the_last_retry(leads, endpoint):
    configure(leads, webhook_url=endpoint.url("/hook"), webhook_secret=SECRET, webhook_retry_intervals=(0, 0))
    endpoint.statuses["/hook"] = [502, 502, 502, 200]
    warm(leads, "olga@example.com")
    leads.work()
    row = notification(leads, "webhook")
    assert (row.status, row.attempts, len(row.error.splitlines())) == ("failed", 3, 3)
    assert len(endpoint.posts("/hook")) == 3
    assert notification(leads, "email").status == "sent", "one channel failing does not hold back the others"


def test_a_refusal_that_cannot_change_is_not_retried(leads, endpoint):
    configure(leads, webhook_url=endpoint.url("/gone"), webhook_secret=SECRET, webhook_retry_intervals=(0, 0))
    endpoint.statuses["/gone"] = [404]
    warm(leads, "olga@example.com")
    leads.work()
    row = notification(leads, "webhook")
    assert (row.status, row.attempts) == ("failed", 1) and "404" in row.error
    assert "/gone" not in row.error, "webhook paths can be secrets (Slack): not stored"


def test_unreachable_endpoint_is_an_error_on_the_row_not_a_crash(leads):
    closed = f"http://127.0.0.1:{__import__('conftest').free_port()}/hook"
    configure(leads, webhook_url=closed, webhook_secret=SECRET, webhook_retry_intervals=(0,))
    warm(leads, "olga@example.com")
    leads.work()
    row = notification(leads, "webhook")
    assert (row.status, row.attempts) == ("failed", 2) and "ConnectError" in row.error


@pytest.mark.parametrize(("env", "message"), [
    ({"NURTURE_WEBHOOK_URL": "https://crm.example.com/hook"},
     "NURTURE_WEBHOOK_URL is set: also set NURTURE_WEBHOOK_SECRET"),
    ({"NURTURE_WEBHOOK_URL": "https://crm.example.com/hook", "NURTURE_WEBHOOK_SECRET": "short"},
     "NURTURE_WEBHOOK_SECRET: use at least 16 random characters"),
    ({"NURTURE_SLACK_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/x"},
     "NURTURE_SLACK_WEBHOOK_URL: 'hooks.slack.com/services/T0/B0/x' must start with http:// or https://"),
    ({"NURTURE_WEBHOOK_RETRY_INTERVALS": "10,soon"},
     "NURTURE_WEBHOOK_RETRY_INTERVALS: '10,soon' must be whole seconds separated by commas"),
    ({"NURTURE_WEBHOOK_RETRY_INTERVALS": "10,-1"}, "a wait cannot be negative"),
    ({"NURTURE_REVIEW_AT": "пятница 16:00"}, "NURTURE_REVIEW_AT: 'пятница 16:00' must be a weekday and a time"),
    ({"NURTURE_REVIEW_AT": "fri 25:00"}, "NURTURE_REVIEW_AT: 'fri 25:00' must be a weekday and a time"),
    ({"NURTURE_WARM_NOTICE_DAYS": "0"}, "NURTURE_WARM_NOTICE_DAYS: must be at least 1"),
])
def test_bad_notification_settings_are_refused_with_the_variable_named(env, message):
    from nurture.config import Settings
    from nurture.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert message in str(error.value)


def test_notification_settings_are_read():
    from nurture.config import Settings

    settings = Settings.from_env({"NURTURE_WEBHOOK_URL": "https://crm.example.com/hook", "NURTURE_WEBHOOK_SECRET": SECRET,
                                  "NURTURE_WEBHOOK_RETRY_INTERVALS": "5,30", "NURTURE_REVIEW_AT": "Mon 06:30",
                                  "NURTURE_WARM_NOTICE_DAYS": "7", "NURTURE_STUCK_DAYS": "21"})
    assert (settings.webhook_retry_intervals, settings.review_at, settings.warm_notice_days, settings.stuck_days) == \
        ((5, 30), (0, 6, 30), 7, 21)
