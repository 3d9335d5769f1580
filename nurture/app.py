"""The Flask application factory: wiring only.

``create_app(settings)`` attaches the blueprints and refuses to start on an
unmigrated database (the message names ``nurture db upgrade``). Nothing builds
an app at import time; ``wsgi.py`` and the demo call this.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix
from sqlmodel import Session

from . import db
from .config import PROJECT_ROOT, Settings


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    db.require_current_schema(settings.database_url)
    app = Flask(__name__, template_folder=str(PROJECT_ROOT / "templates" / "pages"))
    app.config.update(SECRET_KEY=settings.secret_key, NURTURE=settings,
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"))
    if settings.proxy_hops:  # the client's address, scheme and host as the proxies saw them, not the proxy's own
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    from .inbound_views import blueprint as inbound_blueprint
    from .queues import redis_connection
    from .tracking_views import blueprint as tracking_blueprint
    from .unsubscribe import blueprint as unsubscribe_blueprint
    from .web import init_admin

    app.extensions["nurture_redis"] = redis_connection(settings)
    app.register_blueprint(unsubscribe_blueprint)
    app.register_blueprint(tracking_blueprint)
    app.register_blueprint(inbound_blueprint)
    init_admin(app)
    if settings.catcher_dir:
        from .caught_mail import blueprint as caught_blueprint

        app.register_blueprint(caught_blueprint)

    @app.get("/healthz")
    def health():
        with Session(db.engine_for(settings.database_url)) as session:
            session.connection().exec_driver_sql("SELECT 1")
        return {"status": "ok"}

    return app
