"""A draft version's policy, config and note may change (the policy editor,
agents.drafts); a published version still cannot change at all, nor be unpublished.
What names a version (agent, number), its program, author and creation stay fixed
for drafts too. Replaces the trigger of 0003."""

from __future__ import annotations

from django.db import migrations

POSTGRES = r"""
CREATE OR REPLACE FUNCTION baton_version_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.agent_id IS DISTINCT FROM OLD.agent_id OR NEW.number IS DISTINCT FROM OLD.number
       OR NEW.program IS DISTINCT FROM OLD.program OR NEW.author_id IS DISTINCT FROM OLD.author_id
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'agent versions are immutable: publish a new version instead';
    END IF;
    IF OLD.published_at IS NOT NULL AND (
           NEW.config IS DISTINCT FROM OLD.config OR NEW.policy IS DISTINCT FROM OLD.policy
           OR NEW.note IS DISTINCT FROM OLD.note
           OR NEW.published_at IS DISTINCT FROM OLD.published_at) THEN
        RAISE EXCEPTION 'published agent versions are immutable: publish a new version instead';
    END IF;
    RETURN NEW;
END $$;
"""
POSTGRES_BACK = r"""
CREATE OR REPLACE FUNCTION baton_version_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.agent_id IS DISTINCT FROM OLD.agent_id OR NEW.number IS DISTINCT FROM OLD.number
       OR NEW.program IS DISTINCT FROM OLD.program OR NEW.config IS DISTINCT FROM OLD.config
       OR NEW.policy IS DISTINCT FROM OLD.policy OR NEW.author_id IS DISTINCT FROM OLD.author_id
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'agent versions are immutable: publish a new version instead';
    END IF;
    RETURN NEW;
END $$;
"""
SQLITE = r"""
CREATE TRIGGER agentversion_immutable BEFORE UPDATE ON agents_agentversion
FOR EACH ROW WHEN NEW.agent_id IS NOT OLD.agent_id OR NEW.number IS NOT OLD.number
    OR NEW.program IS NOT OLD.program OR NEW.author_id IS NOT OLD.author_id
    OR NEW.created_at IS NOT OLD.created_at
    OR (OLD.published_at IS NOT NULL AND (
        NEW.config IS NOT OLD.config OR NEW.policy IS NOT OLD.policy
        OR NEW.note IS NOT OLD.note OR NEW.published_at IS NOT OLD.published_at))
BEGIN
    SELECT RAISE(ABORT, 'agent versions are immutable: publish a new version instead');
END;
"""
SQLITE_BACK = r"""
CREATE TRIGGER agentversion_immutable BEFORE UPDATE ON agents_agentversion
FOR EACH ROW WHEN NEW.agent_id IS NOT OLD.agent_id OR NEW.number IS NOT OLD.number
    OR NEW.program IS NOT OLD.program OR NEW.config IS NOT OLD.config
    OR NEW.policy IS NOT OLD.policy OR NEW.author_id IS NOT OLD.author_id
    OR NEW.created_at IS NOT OLD.created_at
BEGIN
    SELECT RAISE(ABORT, 'agent versions are immutable: publish a new version instead');
END;
"""


def _replace(schema_editor, postgres: str, sqlite: str) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(postgres)
    elif vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS agentversion_immutable")
        schema_editor.execute(sqlite)


def forwards(apps, schema_editor):
    _replace(schema_editor, POSTGRES, SQLITE)


def backwards(apps, schema_editor):
    _replace(schema_editor, POSTGRES_BACK, SQLITE_BACK)


class Migration(migrations.Migration):
    dependencies = [("agents", "0011_run_start_key")]
    operations = [migrations.RunPython(forwards, backwards)]
