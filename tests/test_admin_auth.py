"""Admin login, roles, CSRF and session cookies, through the Flask test client."""

from __future__ import annotations

from sqlmodel import select

from admin_support import PASSWORD, create_cast, csrf_token, logged_in, login, post_form
from nurture.models import User
from nurture.web.passwords import hash_password


def test_pages_need_a_login(nurture, web):
    client = web()
    for url in ("/admin/leads", "/admin/sequences", "/admin/dashboard", "/admin/users", "/admin/my/warm"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"], url


def test_login_with_the_right_password_opens_the_admin(nurture, web):
    create_cast(nurture)
    client = web()
    response = login(client, "marketer@example.com")
    assert response.status_code == 302
    assert client.get("/admin/sequences").status_code == 200
    page = client.get("/admin/leads").get_data(as_text=True)
    assert "Mark Marketer" in page


def test_wrong_password_is_refused_with_a_message(nurture, web):
    create_cast(nurture)
    client = web()
    client.client.environ_base["REMOTE_ADDR"] = address = f"addr-{nurture.settings.queue_name}"
    response = login(client, "marketer@example.com", "wrong password!")
    nurture.redis.delete(f"nurture:login-failures:ip:{address}", "nurture:login-failures:email:marketer@example.com")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert client.get("/admin/sequences").status_code == 302


def test_login_is_rate_limited_after_ten_failures(nurture, web):
    # Redis is shared by concurrent test runs: this test's own address and account
    address, email = f"addr-{nurture.settings.queue_name}", f"{nurture.settings.queue_name}@example.com"
    create_cast(nurture)
    with nurture.session() as s:
        s.add(User(email=email, role="manager", password_hash=hash_password(PASSWORD), created_at=nurture.now))
        s.commit()
    client = web()
    client.client.environ_base["REMOTE_ADDR"] = address
    try:
        for _ in range(10):
            assert login(client, email, "guess-guess").status_code == 401
        blocked = login(client, email, PASSWORD)  # even the right password waits
        assert blocked.status_code == 429
        assert "Too many failed attempts" in blocked.get_data(as_text=True)
        other = web()  # another address, same account: still blocked
        assert login(other, email, PASSWORD).status_code == 429
    finally:
        nurture.redis.delete(f"nurture:login-failures:ip:{address}", f"nurture:login-failures:email:{email}")


def test_a_form_without_csrf_token_is_refused(nurture, web):
    create_cast(nurture)
    client = web()
    refused = client.post("/admin/login", data={"email": "admin@example.com", "password": PASSWORD})
    assert refused.status_code == 400
    assert "CSRF" in refused.get_data(as_text=True)
    login(client, "admin@example.com")
    response = client.post("/admin/suppression", data={"email": "x@example.com", "reason": "manual"})
    assert response.status_code == 400
    assert client.get("/admin/suppression").get_data(as_text=True).count("x@example.com") == 0


def test_session_cookie_is_secure_httponly_and_lax(nurture, web):
    create_cast(nurture)
    client = web()  # the test settings' base URL is https: the cookie is Secure
    response = login(client, "admin@example.com")
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_a_rep_cannot_open_sequences_templates_or_users(nurture, web):
    create_cast(nurture)
    nurture.load_campaigns()
    client = web()
    login(client, "anna.sales@example.com")
    for url in ("/admin/sequences", "/admin/sequences/new", "/admin/sequences/1", "/admin/templates",
                "/admin/users", "/admin/queue", "/admin/suppression", "/admin/dashboard"):
        assert client.get(url).status_code == 403, url
    assert client.get("/admin/my/warm").status_code == 200


def test_a_marketer_cannot_manage_users(nurture, web):
    client = logged_in(nurture, web, "marketer@example.com")
    assert client.get("/admin/users").status_code == 403
    token = csrf_token(client.get("/admin/leads").get_data(as_text=True))
    assert client.post("/admin/users", data={"email": "evil@example.com", "role": "admin", "password": "x" * 12,
                                             "active": "on", "csrf_token": token}).status_code == 403


def test_an_admin_creates_a_user_who_can_then_log_in(nurture, web):
    client = logged_in(nurture, web, "admin@example.com")
    short = post_form(client, "/admin/users", {"email": "new@example.com", "role": "marketer", "password": "short",
                                              "active": "on"})
    assert short.status_code == 400 and "at least 10 characters" in short.get_data(as_text=True)
    created = post_form(client, "/admin/users", {"email": "New@Example.com", "name": "Нина", "role": "marketer",
                                                "password": "a long password", "active": "on"})
    assert created.status_code == 302
    other = web()
    assert login(other, "new@example.com", "a long password").status_code == 302
    user_id = nurture.scalar(select(User.id).where(User.email == "new@example.com"))
    editing = client.get(f"/admin/users?edit={user_id}").get_data(as_text=True)
    assert 'value="new@example.com"' in editing and 'value="Нина"' in editing
    assert other.get("/admin/templates").status_code == 200


def test_changing_a_password_ends_other_sessions(nurture, web):
    create_cast(nurture)
    rep = web()
    login(rep, "ivan.sales@example.com")
    assert rep.get("/admin/my/warm").status_code == 200
    admin = web()
    login(admin, "admin@example.com")
    post_form(admin, "/admin/users", {"email": "ivan.sales@example.com", "role": "rep", "password": "another password",
                                     "active": "on"})
    assert rep.get("/admin/my/warm").status_code == 302


def test_login_next_does_not_redirect_off_site(nurture, web):
    create_cast(nurture)
    client = web()
    page = client.get("/admin/login?next=https://evil.example/")
    response = client.post("/admin/login?next=https://evil.example/", data={
        "email": "admin@example.com", "password": PASSWORD, "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 302 and "evil.example" not in response.headers["Location"]


def test_cli_creates_the_first_admin_with_a_password(nurture, web):
    import subprocess

    from conftest import NURTURE_BIN

    proc = subprocess.run([str(NURTURE_BIN), "users", "create", "root@example.com", "--admin"],
                          input="first admin pass\nfirst admin pass\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "created admin root@example.com" in proc.stdout
    client = web()
    assert login(client, "root@example.com", "first admin pass").status_code == 302
    assert client.get("/admin/users").status_code == 200
    weak = subprocess.run([str(NURTURE_BIN), "users", "create", "root2@example.com", "--admin"],
                          input="short\nshort\n", capture_output=True, text=True, timeout=60)
    assert weak.returncode != 0 and "at least 10 characters" in weak.stderr
