"""Postgres: the trail becomes a table partitioned by ranges of `seq`, so that old
partitions can move to cheaper storage (ALTER TABLE … SET TABLESPACE), or be detached and
kept elsewhere, while the chain, the pages and the exports read one table. SQLite keeps
its plain table; the model is the same.

- Ranges of PARTITION_SIZE sequence numbers (#1..#10,000,000, then the next ten million…):
  about 10 GB with indexes at the trail's measured 1 KB an event (bench/README.md), a size
  one move to a tablespace or one detach handles in minutes, and 100 partitions at a
  billion events, a count the planner prunes cheaply. The existing table is not copied:
  it is attached as the first partition (everything below the end of the range its head
  is in), so the conversion costs one index build (the primary key), not a rewrite.
- A partitioned table's primary key must hold the partition key: it is (id, seq) in the
  database. The model keeps `id` as its key; ids come from the one identity sequence on
  the parent, so they stay unique, and (id, seq) still finds a row by id.
- Partitions are made ahead by `baton_audit_partitions_ahead` (the checkpoint task calls
  it): the ranges reach at least PARTITION_SIZE events past the head. A DEFAULT partition
  catches any event beyond the last range, should nobody have made the next one in time,
  so no append ever fails for want of a partition; the next call turns what it caught
  into a range partition of its own and makes a new, empty DEFAULT.
- The append-only triggers stay on the parent: the row trigger is cloned to every
  partition by Postgres, the TRUNCATE trigger (statement-level, not cloned) is created on
  each partition as it is made.
"""

from __future__ import annotations

from django.db import migrations

PARTITION_SIZE = 10_000_000
TABLE = "audit_auditevent"

# SECURITY DEFINER: it runs as the owner of the trail, so the application's role (which may
# only insert and read, README) can keep partitions ahead without owning the table. It does
# nothing else; a caller can make at most 64 partitions a call. Its locks are waited for
# 200 ms at most: while ATTACH waits for the DEFAULT partition (a long export or
# verification reads it), the pages queue behind it; it tries again at the next checkpoint.
AHEAD = r"""
CREATE FUNCTION baton_audit_partitions_ahead(p_size bigint DEFAULT 10000000,
                                             p_through bigint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT
SET lock_timeout = '200ms' AS $$
-- Range partitions must cover every seq up to the head plus p_size (or p_through); the
-- DEFAULT partition holds nothing. Returns how many partitions it made.
DECLARE
    v_head bigint;
    v_end bigint;
    v_last bigint;
    v_upper bigint;
    v_name text;
    v_made integer := 0;
BEGIN
    IF p_size < 1 THEN
        RAISE EXCEPTION 'a partition holds at least one event';
    END IF;
    SELECT h.seq INTO v_head FROM audit_chainhead h WHERE h.id = 1;
    v_head := coalesce(v_head, 0);
    SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid),
                             'TO \(''?(-?\d+)''?\)'))[1]::bigint)
        INTO v_end
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_auditevent'::regclass
          AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT';
    IF v_end IS NULL THEN
        -- No range yet: the first covers everything below the end of the head's range.
        v_end := 1 + p_size * (v_head / p_size + 1);
        v_name := 'audit_auditevent_p' || lpad('1', 12, '0');
        EXECUTE format('CREATE TABLE %I (LIKE audit_auditevent INCLUDING DEFAULTS '
                       'INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION)', v_name);
        EXECUTE format('ALTER TABLE audit_auditevent ATTACH PARTITION %I '
                       'FOR VALUES FROM (MINVALUE) TO (%s)', v_name, v_end);
        EXECUTE format('CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse()', v_name);
        v_made := v_made + 1;
    END IF;
    IF EXISTS (SELECT 1 FROM audit_auditevent_default) THEN
        -- Events ran past the last range. They are #v_end onwards, in order: stop the
        -- writers (the chain head first, the order every writer takes), make the DEFAULT
        -- partition the range that holds them, and put an empty DEFAULT in its place.
        PERFORM 1 FROM audit_chainhead h WHERE h.id = 1 FOR UPDATE;
        SELECT max(seq) INTO v_last FROM audit_auditevent_default;
        v_upper := v_end + p_size * ((v_last - v_end) / p_size + 1);
        v_name := 'audit_auditevent_p' || lpad(v_end::text, 12, '0');
        ALTER TABLE audit_auditevent DETACH PARTITION audit_auditevent_default;
        EXECUTE format('ALTER TABLE audit_auditevent_default RENAME TO %I', v_name);
        EXECUTE format('ALTER TABLE audit_auditevent ATTACH PARTITION %I '
                       'FOR VALUES FROM (%s) TO (%s)', v_name, v_end, v_upper);
        CREATE TABLE audit_auditevent_default PARTITION OF audit_auditevent DEFAULT;
        CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent_default
            FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
        v_end := v_upper;
        v_made := v_made + 1;
    END IF;
    WHILE v_end <= greatest(v_head + p_size, coalesce(p_through, 0)) AND v_made < 64 LOOP
        -- Made apart and attached: ATTACH takes a lock that lets writers and readers of
        -- the trail go on, where CREATE TABLE … PARTITION OF would stop them.
        v_name := 'audit_auditevent_p' || lpad(v_end::text, 12, '0');
        EXECUTE format('CREATE TABLE %I (LIKE audit_auditevent INCLUDING DEFAULTS '
                       'INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION)', v_name);
        EXECUTE format('ALTER TABLE audit_auditevent ATTACH PARTITION %I '
                       'FOR VALUES FROM (%s) TO (%s)', v_name, v_end, v_end + p_size);
        EXECUTE format('CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse()', v_name);
        v_end := v_end + p_size;
        v_made := v_made + 1;
    END LOOP;
    RETURN v_made;
END $$;
-- Only roles given it (the README's application role is) may call it, not every login.
REVOKE ALL ON FUNCTION baton_audit_partitions_ahead(bigint, bigint) FROM PUBLIC;
"""

TRIGGERS = r"""
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
"""


def _one(cursor, sql: str, params=None):
    cursor.execute(sql, params)
    return cursor.fetchone()


def _parts(cursor) -> tuple[str, dict[str, str], list[str]]:
    """The table's primary key name, its other constraints and indexes (name: definition,
    for the parent) and its grants, read before it is renamed."""
    (pkey,) = _one(
        cursor,
        "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        [TABLE],
    )
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype IN ('u', 'c', 'x') ORDER BY conname",
        [TABLE],
    )
    constraints = dict(cursor.fetchall())
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = %s::regclass "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid) "
        "ORDER BY i.relname",
        [TABLE],
    )
    indexes = {name: d.replace(" ON ONLY ", " ON ") for name, d in cursor.fetchall()}
    cursor.execute(
        "SELECT format('GRANT %%s ON %%I TO %%I', privilege_type, table_name, grantee) "
        "FROM information_schema.role_table_grants WHERE table_name = %s "
        "AND table_schema = current_schema() AND grantee <> current_user",
        [TABLE],
    )
    grants = [g for (g,) in cursor.fetchall()]
    return pkey, {**constraints, **indexes}, grants


def _sequence_state(cursor) -> int:
    (sequence,) = _one(cursor, "SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    # The names come from the catalog and this module, never from input.
    query = "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM "
    (last,) = _one(cursor, query + sequence)
    (top,) = _one(cursor, f"SELECT coalesce(max(id), 0) + 1 FROM {TABLE}")  # noqa: S608
    return max(last, top)


def _restore(
    cursor, pkey: str, pkey_columns: str, parts: dict[str, str], grants: list[str], restart: int
) -> None:
    cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {pkey} PRIMARY KEY ({pkey_columns})")
    for name, definition in parts.items():
        if definition.startswith("CREATE "):
            cursor.execute(definition)
        else:
            cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")
    cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id RESTART WITH {restart}")
    (sequence,) = _one(cursor, "SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    if sequence.split(".")[-1] != f"{TABLE}_id_seq":
        cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO {TABLE}_id_seq")
    cursor.execute(TRIGGERS)
    for grant in grants:
        cursor.execute(grant)


def partition(cursor, size: int = PARTITION_SIZE) -> None:
    """Make the plain trail the first partition of a partitioned one, in place."""
    pkey, parts, grants = _parts(cursor)
    restart = _sequence_state(cursor)
    (head,) = _one(cursor, "SELECT coalesce(max(seq), 0) FROM audit_auditevent")
    upper = 1 + size * (head // size + 1)
    first = "audit_auditevent_p" + "1".rjust(12, "0")
    cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {first}")
    cursor.execute(f"DROP TRIGGER audit_event_append_only ON {first}")  # the parent's, cloned
    cursor.execute(f"ALTER TABLE {first} DROP CONSTRAINT {pkey}")
    for name, definition in parts.items():
        # The parent's indexes take these names; each partition keeps its own, and the
        # parent's index adopts the equal one already built here instead of building it.
        kind = "INDEX" if definition.startswith("CREATE ") else "CONSTRAINT"
        if kind == "INDEX":
            cursor.execute(f"ALTER INDEX {name} RENAME TO {first}_{name}")
        else:
            cursor.execute(f"ALTER TABLE {first} RENAME CONSTRAINT {name} TO {first}_{name}")
    cursor.execute(
        f"CREATE TABLE {TABLE} (LIKE {first} INCLUDING DEFAULTS INCLUDING GENERATED "
        "INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE (seq)"
    )
    cursor.execute(f"ALTER TABLE {first} ALTER COLUMN id DROP IDENTITY")
    # Proven before attaching, so ATTACH does not scan the table again under its lock.
    cursor.execute(f"ALTER TABLE {first} ADD CONSTRAINT {first}_bound CHECK (seq < {upper})")
    cursor.execute(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {first} FOR VALUES FROM (MINVALUE) TO ({upper})"
    )
    cursor.execute(f"ALTER TABLE {first} DROP CONSTRAINT {first}_bound")
    cursor.execute(f"CREATE TABLE {TABLE}_default PARTITION OF {TABLE} DEFAULT")
    cursor.execute(
        f"CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON {TABLE}_default "
        "FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse()"
    )
    _restore(cursor, pkey, "id, seq", parts, grants, restart)
    cursor.execute(AHEAD)
    cursor.execute("SELECT baton_audit_partitions_ahead(%s)", [size])


def unpartition(cursor) -> None:
    """The way back: one plain table holding every attached partition's events."""
    pkey, parts, grants = _parts(cursor)
    restart = _sequence_state(cursor)
    cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_partitioned")
    cursor.execute(f"ALTER TABLE {TABLE}_partitioned RENAME CONSTRAINT {pkey} TO {pkey}_old")
    for name, definition in parts.items():
        if definition.startswith("CREATE "):
            cursor.execute(f"ALTER INDEX {name} RENAME TO {name}_old")
        else:
            cursor.execute(
                f"ALTER TABLE {TABLE}_partitioned RENAME CONSTRAINT {name} TO {name}_old"
            )
    cursor.execute(
        f"CREATE TABLE {TABLE} (LIKE {TABLE}_partitioned INCLUDING DEFAULTS INCLUDING "
        "GENERATED INCLUDING STORAGE INCLUDING COMPRESSION)"
    )
    cursor.execute(
        "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_name = %s "
        "AND table_schema = current_schema() AND is_generated = 'NEVER'",
        [TABLE],
    )
    (columns,) = cursor.fetchone()
    copy = f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {TABLE}_partitioned"  # noqa: S608
    cursor.execute(copy + " ORDER BY seq")
    cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
    cursor.execute(f"DROP TABLE {TABLE}_partitioned CASCADE")
    cursor.execute("DROP FUNCTION IF EXISTS baton_audit_partitions_ahead(bigint, bigint)")
    _restore(cursor, pkey, "id", parts, grants, restart)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            partition(cursor)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            unpartition(cursor)


class Migration(migrations.Migration):
    dependencies = [("audit", "0010_verification_from_seq")]
    operations = [migrations.RunPython(forwards, backwards)]
