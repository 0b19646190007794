-- Rollback of 0007: sync functions and the resync trigger go, track_table and friends are
-- the 0004 versions again, and the app tables lose row-level security and the reader's grants.
drop trigger if exists _500_resync_user_insert on app.contact_channels;
drop trigger if exists _500_resync_user_update on app.contact_channels;
drop trigger if exists _500_resync_user_delete on app.contact_channels;
drop function if exists app.tg_contact_channels__resync_user();
drop function if exists pyglue.add_sync_target(uuid, text, text);
drop function if exists pyglue.remove_sync_target(uuid, text);
drop function if exists pyglue.set_sync_target_enabled(uuid, text, boolean);
drop function if exists pyglue.record_sync_result(bigint, text, interval, interval);
drop function if exists pyglue.record_sync_cursor(bigint, text, bigint);
drop function if exists pyglue.register_mapping(text, regclass);
drop function if exists pyglue.release_request(bigint, text);
drop function if exists pyglue.extend_lease(bigint, text, interval);
drop function if exists pyglue.sync_status(uuid);
drop policy if exists pyglue_visible on app.users;
drop policy if exists pyglue_tenancy_isolation on app.users;
alter table app.users disable row level security;
revoke select on app.users from pyglue_mapping_reader;
drop policy if exists pyglue_visible on app.contact_channels;
drop policy if exists pyglue_tenancy_isolation on app.contact_channels;
alter table app.contact_channels disable row level security;
revoke select on app.contact_channels from pyglue_mapping_reader;
drop policy if exists pyglue_visible on app.teams;
drop policy if exists pyglue_tenancy_isolation on app.teams;
alter table app.teams disable row level security;
revoke select on app.teams from pyglue_mapping_reader;
drop policy if exists pyglue_visible on app.team_members;
drop policy if exists pyglue_tenancy_isolation on app.team_members;
alter table app.team_members disable row level security;
revoke select on app.team_members from pyglue_mapping_reader;
revoke usage on schema app from pyglue_mapping_reader;

-- restored from 0004 (copy of sql/functions/pyglue.track_table.sql as it was there)
-- pyglue.track_table(p_table, p_tenancy_column): make a table syncable.
--
-- Adds sequence_id and should_update_sequence_id (existing rows start flagged, so they
-- sync once), the two indexes the sequencer and the fetch need, a BEFORE UPDATE trigger
-- that re-flags a row whenever anything but the sequencer changes it, and DELETE and
-- TRUNCATE triggers that write tombstones to pyglue.deleted_rows in the same transaction
-- (rows removed by foreign-key cascades included). Idempotent: a second call changes
-- nothing but the recorded tenancy column.
--
-- Parameters: p_table, any ordinary table with a primary key; p_tenancy_column, its uuid
-- column naming the tenancy (default tenancy_id).
-- Errors: 42809 not an ordinary table or a pyglue table; 42P16 no primary key;
-- 42703 no such column; 42804 tenancy column is not uuid.
-- Locks: ACCESS EXCLUSIVE on p_table while its columns and triggers are added.
create or replace function pyglue.track_table(p_table regclass, p_tenancy_column name default 'tenancy_id')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_relname name;
    v_relkind "char";
    v_schema name;
    v_key name[];
    v_tenancy_type regtype;
begin
    select c.relname, c.relkind, n.nspname into v_relname, v_relkind, v_schema
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = p_table;
    if v_relkind is distinct from 'r' or v_schema = 'pyglue' then
        raise exception 'cannot track %: not an ordinary table outside schema pyglue', p_table
            using errcode = '42809';
    end if;

    select array_agg(a.attname order by k.ord) into v_key
    from pg_index i
    cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = p_table and i.indisprimary;
    if v_key is null then
        raise exception 'cannot track %: it has no primary key', p_table
            using errcode = '42P16', hint = 'Tombstones identify deleted rows by primary key.';
    end if;

    select a.atttypid::regtype into v_tenancy_type
    from pg_attribute a
    where a.attrelid = p_table and a.attname = p_tenancy_column and a.attnum > 0 and not a.attisdropped;
    if v_tenancy_type is null then
        raise exception 'cannot track %: it has no column %', p_table, quote_ident(p_tenancy_column)
            using errcode = '42703';
    end if;
    if v_tenancy_type <> 'uuid'::regtype then
        raise exception 'cannot track %: tenancy column % is %, not uuid', p_table, quote_ident(p_tenancy_column), v_tenancy_type
            using errcode = '42804';
    end if;

    execute format(
        'alter table %s add column if not exists sequence_id bigint,'
        ' add column if not exists should_update_sequence_id boolean not null default true', p_table);
    execute format('create index if not exists %I on %s (%I) where should_update_sequence_id',
                   left(v_relname, 40) || '_pyglue_flagged_idx', p_table, p_tenancy_column);
    execute format('create index if not exists %I on %s (%I, sequence_id)',
                   left(v_relname, 40) || '_pyglue_sequence_idx', p_table, p_tenancy_column);
    -- Fires only for a row not yet flagged whose sequence_id is unchanged: application
    -- updates of synced rows. The sequencer's own stamp changes sequence_id, so it never
    -- re-flags; rows already flagged cost nothing.
    execute format(
        'create or replace trigger _100_pyglue_flag_change before update on %s for each row'
        ' when (not new.should_update_sequence_id and new.sequence_id is not distinct from old.sequence_id)'
        ' execute function pyglue._tg_flag_change()', p_table);
    execute format(
        'create or replace trigger _900_pyglue_log_delete after delete on %s'
        ' referencing old table as pyglue_old_rows for each statement'
        ' execute function pyglue._tg_log_delete(%L, %L)', p_table, p_tenancy_column, v_key::text);
    execute format(
        'create or replace trigger _900_pyglue_log_truncate before truncate on %s for each statement'
        ' execute function pyglue._tg_log_delete(%L, %L)', p_table, p_tenancy_column, v_key::text);

    insert into pyglue.tracked_tables (table_name, tenancy_column, key_columns)
    values (p_table, p_tenancy_column, v_key)
    on conflict (table_name) do update
        set tenancy_column = excluded.tenancy_column, key_columns = excluded.key_columns;
end;
$$;

comment on function pyglue.track_table(regclass, name) is
    'Make a table with a primary key syncable: sequence columns, indexes, change and delete triggers. Idempotent.';

-- restored from 0004 (copy of sql/functions/pyglue.untrack_table.sql as it was there)
-- pyglue.untrack_table(p_table, p_drop_columns): stop capturing changes of a table.
--
-- Drops the pyglue triggers and forgets the table; with p_drop_columns also drops
-- sequence_id, should_update_sequence_id and their indexes. Its tombstones stay in
-- pyglue.deleted_rows until purged. Returns false when the table was not tracked.
-- Locks: ACCESS EXCLUSIVE on p_table.
create or replace function pyglue.untrack_table(p_table regclass, p_drop_columns boolean default false)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from pyglue.tracked_tables where table_name = p_table;
    if not found then
        return false;
    end if;
    execute format('drop trigger if exists _100_pyglue_flag_change on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_delete on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_truncate on %s', p_table);
    if p_drop_columns then
        execute format('alter table %s drop column if exists sequence_id,'
                       ' drop column if exists should_update_sequence_id', p_table);
    end if;
    return true;
end;
$$;

comment on function pyglue.untrack_table(regclass, boolean) is
    'Stop change capture on a table (optionally dropping its sequence columns). Returns false if it was not tracked.';

-- restored from 0004 (copy of sql/functions/pyglue.purge_deleted_rows.sql as it was there)
-- pyglue.purge_deleted_rows(p_older_than): drop old tombstones so the log stays small.
-- Only stamped tombstones (already handed to sync) deleted longer than p_older_than ago
-- go. Returns how many were removed. Errors: 22023 negative retention.
create or replace function pyglue.purge_deleted_rows(p_older_than interval default '7 days')
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
begin
    if p_older_than is null or p_older_than < '0' then
        raise exception 'retention must not be negative, got %', p_older_than using errcode = '22023';
    end if;
    delete from pyglue.deleted_rows d
    where not d.should_update_sequence_id and d.deleted_at < now() - p_older_than;
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function pyglue.purge_deleted_rows(interval) is
    'Delete stamped tombstones older than the retention period. Returns how many.';
