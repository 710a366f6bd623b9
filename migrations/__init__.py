"""Alembic environment and revisions for the campaign database (see runner.py)."""
