"""Alembic migrations of radfusion's database schema (applied by ``radfusion.schema.upgrade_schema``)."""
