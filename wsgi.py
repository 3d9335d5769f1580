"""The WSGI entry point: ``gunicorn wsgi:app``."""

from nurture.app import create_app

app = create_app()
