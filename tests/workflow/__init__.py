"""Workflow tests: machine, legacy mapping, store, migrations, seed (SQLite and PostgreSQL)."""
