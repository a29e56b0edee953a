"""An agent version is immutable: its program, config and policy never change after it is
written (a change is a new version). Only the rollout stage and its timestamp move.
Enforced by the database, so no code path — not even a careless shell — can edit one."""

from __future__ import annotations

from django.db import migrations

POSTGRES = r"""
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
CREATE TRIGGER agentversion_immutable BEFORE UPDATE ON agents_agentversion
    FOR EACH ROW EXECUTE FUNCTION baton_version_immutable();
"""
SQLITE = r"""
CREATE TRIGGER agentversion_immutable BEFORE UPDATE ON agents_agentversion
FOR EACH ROW WHEN NEW.agent_id IS NOT OLD.agent_id OR NEW.number IS NOT OLD.number
    OR NEW.program IS NOT OLD.program OR NEW.config IS NOT OLD.config
    OR NEW.policy IS NOT OLD.policy OR NEW.author_id IS NOT OLD.author_id
    OR NEW.created_at IS NOT OLD.created_at
BEGIN
    SELECT RAISE(ABORT, 'agent versions are immutable: publish a new version instead');
END;
"""


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES)
    elif vendor == "sqlite":
        schema_editor.execute(SQLITE)


def backwards(apps, schema_editor):
    schema_editor.execute(
        "DROP TRIGGER IF EXISTS agentversion_immutable ON agents_agentversion"
        if schema_editor.connection.vendor == "postgresql"
        else "DROP TRIGGER IF EXISTS agentversion_immutable"
    )


class Migration(migrations.Migration):
    dependencies = [("agents", "0002_gateway_functions")]
    operations = [migrations.RunPython(forwards, backwards)]
