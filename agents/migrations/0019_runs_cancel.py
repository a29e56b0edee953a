"""Postgres: cancelling every unfinished run in a scope in one round trip (agents/store.py
runs_cancel; other databases take the ORM path there). A halt covers hundreds of runs and
holds the kill switch's lock while it cancels them, so the runs are locked in id order,
cancelled, and their held actions cancelled by three statements in the database, and the
function answers each run's id, agent and team for the audit events the caller appends.
Each statement takes its own snapshot (a VOLATILE function in READ COMMITTED), as the ORM
path's statements do: a run that finished while its lock was awaited is left alone. The
held actions are found by a partial index of the awaiting steps (`action_awaiting`), not by
reading every step the runs took (a busy run has taken thousands).

The statuses are Run.FINAL and Action.AWAITING as they were written here; a test holds the
live function equal to them (tests/agents/test_store_sql.py)."""

from __future__ import annotations

from django.db import migrations, models

FUNCTION = r"""
CREATE OR REPLACE FUNCTION baton_runs_cancel(
    p_team bigint, p_agent bigint, p_run bigint, p_reason text, p_now timestamptz)
RETURNS TABLE (o_run bigint, o_agent bigint, o_team bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_ids bigint[];
BEGIN
    v_ids := ARRAY(
        SELECT r.id FROM agents_run r
         WHERE r.status NOT IN ('succeeded', 'failed', 'cancelled')
           AND (p_run IS NULL OR r.id = p_run)
           AND (p_agent IS NULL OR r.agent_id = p_agent)
           AND (p_team IS NULL
                OR r.agent_id IN (SELECT a.id FROM agents_agent a WHERE a.team_id = p_team))
         ORDER BY r.id
           FOR NO KEY UPDATE OF r);
    IF cardinality(v_ids) = 0 THEN RETURN; END IF;
    UPDATE agents_run
       SET status = 'cancelled', error = p_reason, finished_at = p_now, lease_token = NULL,
           lease_until = NULL, wait_reason = ''
     WHERE id = ANY(v_ids);
    UPDATE agents_action SET status = 'cancelled', error = p_reason
     WHERE run_id = ANY(v_ids) AND status IN ('held', 'unknown', 'approved');
    RETURN QUERY
        SELECT r.id, r.agent_id, a.team_id
          FROM agents_run r JOIN agents_agent a ON a.id = r.agent_id
         WHERE r.id = ANY(v_ids)
         ORDER BY r.id;
END $$;
"""
DROP = "DROP FUNCTION IF EXISTS baton_runs_cancel(bigint, bigint, bigint, text, timestamptz);"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("agents", "0018_alert_rules")]
    operations = [
        migrations.AddIndex(
            model_name="action",
            index=models.Index(
                condition=models.Q(("status__in", ["held", "unknown", "approved"])),
                fields=["run"],
                name="action_awaiting",
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
