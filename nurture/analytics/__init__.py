"""Funnel analytics, step performance, bottleneck, backwards plan and forecast.

Each module is one subject; the computations are plain functions (database in,
dataclasses out, or numbers in, numbers out) so the CLI and the admin dashboard
show the same figures. Nothing here imports Flask, RQ or Redis.
"""
