-- sync functions: targets, status, cursors, lease renewal and release; track_table now
-- adds row-level security for the mapping reader (so the app tables are tracked again
-- below), tombstone purging respects target cursors, and a primary email change re-syncs
-- its user. Copies of sql/functions and sql/triggers (the drift test checks them).
-- are in 0004.
-- depends: 0006_sync_tables

-- copied from sql/functions/pyglue.track_table.sql
-- pyglue.track_table(p_table, p_tenancy_column): make a table syncable.
--
-- Adds sequence_id and should_update_sequence_id (existing rows start flagged, so they
-- sync once), the two indexes the sequencer and the fetch need, a BEFORE UPDATE trigger
-- that re-flags a row whenever anything but the sequencer changes it, and DELETE and
-- TRUNCATE triggers that write tombstones to pyglue.deleted_rows in the same transaction
-- (rows removed by foreign-key cascades included). Idempotent: a second call changes
-- nothing but the recorded tenancy column.
--
-- Tenant isolation for sync mappings: grants SELECT to pyglue_mapping_reader and adds a
-- restrictive row-level security policy for that role keyed by the per-transaction
-- setting pyglue.tenancy_id. What other roles see does not change: if row-level security
-- was off, it is turned on with a permissive policy for everyone (using true); if the
-- table already had its own policies, only the reader gets a permissive one.
--
-- Parameters: p_table, any ordinary table with a primary key; p_tenancy_column, its uuid
-- column naming the tenancy (default tenancy_id).
-- Errors: 42809 not an ordinary table or a pyglue table; 42P16 no primary key;
-- 42703 no such column; 42804 tenancy column is not uuid.
-- Locks: ACCESS EXCLUSIVE on p_table while its columns, triggers and policies are added.
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
    v_had_rls boolean;
    v_rls_ours boolean;
begin
    select c.relname, c.relkind, n.nspname, c.relrowsecurity into v_relname, v_relkind, v_schema, v_had_rls
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

    -- row-level security for mapping reads (see the header)
    select t.rls_enabled_by_pyglue into v_rls_ours from pyglue.tracked_tables t where t.table_name = p_table;
    v_rls_ours := coalesce(v_rls_ours, not v_had_rls);
    execute format('grant usage on schema %I to pyglue_mapping_reader', v_schema);
    execute format('grant select on %s to pyglue_mapping_reader', p_table);
    execute format('drop policy if exists pyglue_visible on %s', p_table);
    execute format('drop policy if exists pyglue_tenancy_isolation on %s', p_table);
    execute format('create policy pyglue_visible on %s as permissive to %s using (true)',
                   p_table, case when v_rls_ours then 'public' else 'pyglue_mapping_reader' end);
    execute format(
        'create policy pyglue_tenancy_isolation on %s as restrictive to pyglue_mapping_reader'
        ' using (%I = nullif(current_setting(''pyglue.tenancy_id'', true), '''')::uuid)', p_table, p_tenancy_column);
    execute format('alter table %s enable row level security', p_table);

    insert into pyglue.tracked_tables (table_name, tenancy_column, key_columns, rls_enabled_by_pyglue)
    values (p_table, p_tenancy_column, v_key, v_rls_ours)
    on conflict (table_name) do update
        set tenancy_column = excluded.tenancy_column, key_columns = excluded.key_columns;
end;
$$;

comment on function pyglue.track_table(regclass, name) is
    'Make a table with a primary key syncable: sequence columns, indexes, change and delete triggers. Idempotent.';

-- copied from sql/functions/pyglue.untrack_table.sql
-- pyglue.untrack_table(p_table, p_drop_columns): stop capturing changes of a table.
--
-- Drops the pyglue triggers and policies (turning row-level security off again if
-- track_table turned it on) and forgets the table; with p_drop_columns also drops
-- sequence_id, should_update_sequence_id and their indexes. Its tombstones stay in
-- pyglue.deleted_rows until purged. Returns false when the table was not tracked.
-- Locks: ACCESS EXCLUSIVE on p_table.
create or replace function pyglue.untrack_table(p_table regclass, p_drop_columns boolean default false)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rls_ours boolean;
begin
    delete from pyglue.tracked_tables t where t.table_name = p_table
    returning t.rls_enabled_by_pyglue into v_rls_ours;
    if not found then
        return false;
    end if;
    execute format('drop policy if exists pyglue_visible on %s', p_table);
    execute format('drop policy if exists pyglue_tenancy_isolation on %s', p_table);
    if v_rls_ours then
        execute format('alter table %s disable row level security', p_table);
    end if;
    execute format('revoke select on %s from pyglue_mapping_reader', p_table);
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

-- copied from sql/functions/pyglue.purge_deleted_rows.sql
-- pyglue.purge_deleted_rows(p_older_than): drop old tombstones so the log stays small.
-- A tombstone goes when it is stamped, was deleted longer than p_older_than ago, and no
-- sync target of its tenancy still needs it: every target whose mapping exports that
-- table has a cursor at or past it (a target that never synced needs no tombstones).
-- Returns how many were removed. Errors: 22023 negative retention.
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
    where not d.should_update_sequence_id
      and d.deleted_at < now() - p_older_than
      and not exists (
          select 1
          from pyglue.sync_targets t
          join pyglue.sync_mappings m on m.source_table = d.table_name
          join pyglue.sync_cursors c on c.target_id = t.id and c.mapping_name = m.name
          where t.tenancy_id = d.tenancy_id and c.last_synced_sequence_id < d.sequence_id);
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function pyglue.purge_deleted_rows(interval) is
    'Delete stamped tombstones older than the retention period that no sync target still needs. Returns how many.';

-- copied from sql/functions/pyglue.add_sync_target.sql
-- pyglue.add_sync_target(p_tenancy_id, p_name, p_connection_string): register an external
-- Postgres database that receives a tenancy's data, and queue its first sync.
-- The connection string is stored as given (it may hold a password: the table is not
-- readable by pyglue_mapping_reader, and pyglue never prints it).
-- Returns: the target id.
-- Errors: 22023 bad name or empty connection string; 23505 name already used by the tenancy.
create or replace function pyglue.add_sync_target(p_tenancy_id uuid, p_name text, p_connection_string text)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if p_name is null or p_name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' then
        raise exception 'invalid sync target name %: use 1-63 letters, digits, _ . -', coalesce(quote_literal(p_name), 'NULL')
            using errcode = '22023';
    end if;
    if coalesce(btrim(p_connection_string), '') = '' then
        raise exception 'connection string of sync target % must not be empty', p_name using errcode = '22023';
    end if;
    insert into pyglue.sync_targets (tenancy_id, name, connection_string)
    values (p_tenancy_id, p_name, p_connection_string)
    returning id into v_id;
    perform pyglue.enqueue_sync(p_tenancy_id);
    return v_id;
exception when unique_violation then
    raise exception 'sync target % already exists for tenancy %', p_name, p_tenancy_id using errcode = '23505';
end;
$$;

comment on function pyglue.add_sync_target(uuid, text, text) is
    'Register an external Postgres database as a sync target of a tenancy and queue its first sync. Returns the id.';

-- copied from sql/functions/pyglue.remove_sync_target.sql
-- pyglue.remove_sync_target(p_tenancy_id, p_name): forget a sync target (its data in the
-- external database stays). Returns false when there was no such target.
create or replace function pyglue.remove_sync_target(p_tenancy_id uuid, p_name text)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with gone as (
        delete from pyglue.sync_targets t where t.tenancy_id = p_tenancy_id and t.name = p_name returning 1
    )
    select exists (select 1 from gone);
$$;

comment on function pyglue.remove_sync_target(uuid, text) is
    'Remove a sync target of a tenancy (the external data stays). Returns false if it did not exist.';

-- copied from sql/functions/pyglue.set_sync_target_enabled.sql
-- pyglue.set_sync_target_enabled(p_tenancy_id, p_name, p_enabled): pause or resume one
-- target. Enabling clears its backoff and queues a sync. Returns false when no such target.
create or replace function pyglue.set_sync_target_enabled(p_tenancy_id uuid, p_name text, p_enabled boolean)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    update pyglue.sync_targets t
    set enabled = p_enabled,
        retry_after = case when p_enabled then null else t.retry_after end,
        consecutive_failures = case when p_enabled then 0 else t.consecutive_failures end
    where t.tenancy_id = p_tenancy_id and t.name = p_name;
    if not found then
        return false;
    end if;
    if p_enabled then
        perform pyglue.enqueue_sync(p_tenancy_id);
    end if;
    return true;
end;
$$;

comment on function pyglue.set_sync_target_enabled(uuid, text, boolean) is
    'Enable or disable a sync target; enabling clears its backoff and queues a sync.';

-- copied from sql/functions/pyglue.record_sync_result.sql
-- pyglue.record_sync_result(p_target_id, p_error, ...): what the last sync of a target did.
-- Null p_error: success (failures reset, last_success_at set). Otherwise the error is kept
-- and the target backs off: retry_after = now() + least(p_max_delay, p_base_delay *
-- 2^(failures - 1)); workers skip it until then, other targets are not held up.
-- Returns: retry_after (null after a success).
create or replace function pyglue.record_sync_result(p_target_id bigint, p_error text default null,
                                                     p_base_delay interval default '2 seconds',
                                                     p_max_delay interval default '5 minutes')
returns timestamptz
language sql
set search_path = pg_catalog, pg_temp
as $$
    update pyglue.sync_targets t
    set last_success_at = case when p_error is null then now() else t.last_success_at end,
        last_error = coalesce(p_error, t.last_error),
        last_error_at = case when p_error is null then t.last_error_at else now() end,
        consecutive_failures = case when p_error is null then 0 else t.consecutive_failures + 1 end,
        retry_after = case when p_error is null then null
                           else now() + least(p_max_delay, p_base_delay * power(2, t.consecutive_failures)) end
    where t.id = p_target_id
    returning t.retry_after;
$$;

comment on function pyglue.record_sync_result(bigint, text, interval, interval) is
    'Record a sync success (null error) or failure of a target; failures back off exponentially. Returns retry_after.';

-- copied from sql/functions/pyglue.record_sync_cursor.sql
-- pyglue.record_sync_cursor(p_target_id, p_mapping_name, p_sequence_id): mirror, in the
-- source database, how far a target got with a mapping. The authoritative cursor lives in
-- the target (_pyglue_sync_metadata, advanced in the same transaction as the data); this
-- copy is written after that commit, so it never runs ahead of it. Status and tombstone
-- purging read it. Never moves backwards.
create or replace function pyglue.record_sync_cursor(p_target_id bigint, p_mapping_name text, p_sequence_id bigint)
returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
    insert into pyglue.sync_cursors as c (target_id, mapping_name, last_synced_sequence_id)
    values (p_target_id, p_mapping_name, p_sequence_id)
    on conflict (target_id, mapping_name) do update
        set last_synced_sequence_id = greatest(c.last_synced_sequence_id, excluded.last_synced_sequence_id),
            updated_at = now();
$$;

comment on function pyglue.record_sync_cursor(bigint, text, bigint) is
    'Mirror the cursor a target reached for a mapping (never moves backwards).';

-- copied from sql/functions/pyglue.register_mapping.sql
-- pyglue.register_mapping(p_name, p_source_table): tell the database which tracked table
-- a mapping exports (its rows and tombstones), so sync_status can count pending rows and
-- purge_deleted_rows knows which tombstones a target still needs. Idempotent.
-- Errors: 42P01 unknown table; 22023 table not tracked.
create or replace function pyglue.register_mapping(p_name text, p_source_table regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from pyglue.tracked_tables t where t.table_name = p_source_table) then
        raise exception 'mapping %: source table % is not tracked (call pyglue.track_table first)', p_name, p_source_table
            using errcode = '22023';
    end if;
    insert into pyglue.sync_mappings as m (name, source_table)
    values (p_name, p_source_table::text)
    on conflict (name) do update set source_table = excluded.source_table, updated_at = now()
        where m.source_table is distinct from excluded.source_table;
end;
$$;

comment on function pyglue.register_mapping(text, regclass) is
    'Record which tracked table a sync mapping exports (for status and tombstone retention).';

-- copied from sql/functions/pyglue.release_request.sql
-- pyglue.release_request(p_id, p_worker): hand a claimed request back unfinished (a worker
-- shutting down). It becomes pending at once and the claim does not count as an attempt;
-- if the tenancy has a pending request already, the two merge. Returns false when the
-- request is not claimed by p_worker.
create or replace function pyglue.release_request(p_id bigint, p_worker text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy uuid;
begin
    select r.tenancy_id into v_tenancy from pyglue.outgoing_requests r
    where r.id = p_id and r.status = 'claimed' and r.claimed_by = p_worker
    for update;
    if not found then
        return false;
    end if;
    begin
        update pyglue.outgoing_requests
        set status = 'pending', run_after = now(), attempts = greatest(attempts - 1, 0),
            claimed_by = null, claimed_at = null, lease_expires_at = null
        where id = p_id;
    exception when unique_violation then
        delete from pyglue.outgoing_requests where id = p_id;
    end;
    return true;
end;
$$;

comment on function pyglue.release_request(bigint, text) is
    'Give a claimed sync request back, unfinished and without counting the attempt.';

-- copied from sql/functions/pyglue.extend_lease.sql
-- pyglue.extend_lease(p_id, p_worker, p_lease): a worker still busy with a request renews
-- its lease, so a long sync is not handed to another worker. Returns false when the
-- request is no longer claimed by p_worker (its lease expired and someone took it).
create or replace function pyglue.extend_lease(p_id bigint, p_worker text, p_lease interval default '5 minutes')
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with renewed as (
        update pyglue.outgoing_requests r
        set lease_expires_at = now() + p_lease
        where r.id = p_id and r.status = 'claimed' and r.claimed_by = p_worker
        returning 1
    )
    select exists (select 1 from renewed);
$$;

comment on function pyglue.extend_lease(bigint, text, interval) is
    'Renew the lease of a claimed sync request. Returns false if the worker no longer holds it.';

-- copied from sql/functions/pyglue.sync_status.sql
-- pyglue.sync_status(p_tenancy_id): how far each target of a tenancy (or of all
-- tenancies) is, per mapping.
--
-- pending_rows counts rows, not id differences: rows of the mapping's source table and
-- its tombstones that are past the target's cursor or not yet sequenced (index scans on
-- (tenancy, sequence_id) and the flagged partial index). Queue columns describe the
-- tenancy's requests: queue_depth (pending + claimed), dead_requests, and the age of the
-- oldest pending one. Never shows connection strings.
create or replace function pyglue.sync_status(p_tenancy_id uuid default null)
returns table (
    tenancy_id uuid, target_name text, enabled boolean, mapping_name text,
    last_synced_sequence_id bigint, pending_rows bigint, last_success_at timestamptz,
    last_error text, last_error_at timestamptz, retry_after timestamptz,
    queue_depth bigint, dead_requests bigint, oldest_pending_age interval)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row record;
    v_live bigint;
    v_dead bigint;
begin
    for v_row in
        select t.id as target_id, t.tenancy_id, t.name, t.enabled, t.last_success_at, t.last_error,
               t.last_error_at, t.retry_after, m.name as mapping_name, m.source_table,
               tt.tenancy_column, coalesce(c.last_synced_sequence_id, 0) as cursor,
               q.depth, q.dead, q.oldest
        from pyglue.sync_targets t
        cross join pyglue.sync_mappings m
        join pyglue.tracked_tables tt on tt.table_name::text = m.source_table
        left join pyglue.sync_cursors c on c.target_id = t.id and c.mapping_name = m.name
        cross join lateral (
            select count(*) filter (where r.status in ('pending', 'claimed')) as depth,
                   count(*) filter (where r.status = 'dead') as dead,
                   now() - min(r.created_at) filter (where r.status = 'pending') as oldest
            from pyglue.outgoing_requests r where r.tenancy_id = t.tenancy_id) q
        where p_tenancy_id is null or t.tenancy_id = p_tenancy_id
        order by t.tenancy_id, t.name, m.name
    loop
        execute format(
            'select count(*) from %s where %I = $1 and (sequence_id > $2 or should_update_sequence_id)',
            v_row.source_table, v_row.tenancy_column)
        into v_live using v_row.tenancy_id, v_row.cursor;
        select count(*) into v_dead from pyglue.deleted_rows d
        where d.tenancy_id = v_row.tenancy_id and d.table_name = v_row.source_table
          and (d.sequence_id > v_row.cursor or d.should_update_sequence_id);
        tenancy_id := v_row.tenancy_id;
        target_name := v_row.name;
        enabled := v_row.enabled;
        mapping_name := v_row.mapping_name;
        last_synced_sequence_id := v_row.cursor;
        pending_rows := v_live + v_dead;
        last_success_at := v_row.last_success_at;
        last_error := v_row.last_error;
        last_error_at := v_row.last_error_at;
        retry_after := v_row.retry_after;
        queue_depth := v_row.depth;
        dead_requests := v_row.dead;
        oldest_pending_age := v_row.oldest;
        return next;
    end loop;
end;
$$;

comment on function pyglue.sync_status(uuid) is
    'Per sync target and mapping: cursor, pending changes in rows, last success and error, queue depth, dead requests, oldest pending age.';

-- copied from sql/triggers/app.contact_channels__resync_user.sql
-- A user's synced row carries its primary email and whether it is verified, so a change
-- to a primary email channel (added, edited, removed, or made/unmade primary) flags the
-- user for the sequencer too. Statement-level with transition tables: one UPDATE per
-- statement, however many channels it touched. Users already flagged are left alone.
create or replace function app.tg_contact_channels__resync_user()
returns trigger
language plpgsql
as $$
begin
    if tg_op in ('INSERT', 'UPDATE') then
        update app.users u set should_update_sequence_id = true
        from (select distinct n.tenancy_id, n.user_id from pyglue_new_channels n
              where n.type = 'email' and n.is_primary) c
        where u.tenancy_id = c.tenancy_id and u.id = c.user_id and not u.should_update_sequence_id;
    end if;
    if tg_op in ('DELETE', 'UPDATE') then
        update app.users u set should_update_sequence_id = true
        from (select distinct o.tenancy_id, o.user_id from pyglue_old_channels o
              where o.type = 'email' and o.is_primary) c
        where u.tenancy_id = c.tenancy_id and u.id = c.user_id and not u.should_update_sequence_id;
    end if;
    return null;
end;
$$;

comment on function app.tg_contact_channels__resync_user() is
    'Trigger: flag the user for sync when its primary email channel changes.';

create or replace trigger _500_resync_user_insert
    after insert on app.contact_channels referencing new table as pyglue_new_channels
    for each statement execute function app.tg_contact_channels__resync_user();
create or replace trigger _500_resync_user_update
    after update on app.contact_channels referencing old table as pyglue_old_channels new table as pyglue_new_channels
    for each statement execute function app.tg_contact_channels__resync_user();
create or replace trigger _500_resync_user_delete
    after delete on app.contact_channels referencing old table as pyglue_old_channels
    for each statement execute function app.tg_contact_channels__resync_user();

-- re-track the app tables: adds the row-level security policies of the new track_table
select pyglue.track_table('app.users');
select pyglue.track_table('app.contact_channels');
select pyglue.track_table('app.teams');
select pyglue.track_table('app.team_members');
