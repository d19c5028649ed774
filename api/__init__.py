"""The admin HTTP API under /api/v1: one module per resource, assembled by api/app.py."""
