-- review fixes: tenant isolation of mapping fetches no longer trusts a setting the query
-- could change (policies compare against pyglue._fetch_tenancy(), fed by a row the fetch
-- cannot write; still an index condition); tombstones beyond one batch are never stamped after live rows; a primary
-- key change leaves a tombstone for the old key; capture triggers run as their owner so
-- application roles need no rights on schema pyglue; backoff cannot overflow; a claim
-- takes one request per tenancy; fail_request can be limited to the claiming worker (new
-- signature: the old one is dropped); the sequencer locks rows FOR NO KEY UPDATE.
-- depends: 0008_resync_user_on_row_updates

create unlogged table if not exists pyglue.fetch_sessions (
    backend_pid integer primary key,
    tenancy_id  uuid not null,
    xact        xid8 not null,
    started_at  timestamptz not null default now()
);
comment on table pyglue.fetch_sessions is 'Which tenancy the mapping fetch running in a backend''s current transaction may read (see pyglue._fetch_tenancy)';

-- copied from sql/functions/pyglue._fetch_tenancy.sql
-- pyglue._fetch_tenancy(): the tenancy a mapping fetch may read, or null.
--
-- The sync engine writes (backend pid, tenancy, its transaction id) into
-- pyglue.fetch_sessions, then makes the transaction read-only and switches to
-- pyglue_mapping_reader before running the mapping's query. The row-level security
-- policies for that role compare against this function. A mapping query can change a
-- setting, but it cannot write this row (read-only transaction, no grant), and a row
-- left by an earlier transaction of the same backend does not count.
-- SECURITY DEFINER: the reader has no access to pyglue.fetch_sessions.
create or replace function pyglue._fetch_tenancy()
returns uuid
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select s.tenancy_id
    from pyglue.fetch_sessions s
    where s.backend_pid = pg_backend_pid() and s.xact = pg_current_xact_id_if_assigned();
$$;

comment on function pyglue._fetch_tenancy() is
    'The tenancy the current mapping fetch may read (row-level security of pyglue_mapping_reader), or null.';

-- copied from sql/functions/pyglue._tg_log_delete.sql
-- pyglue._tg_log_delete(tenancy_column, key_columns): statement trigger of tracked tables.
--
-- AFTER DELETE (with the transition table pyglue_old_rows) and BEFORE TRUNCATE (reading
-- the whole table): one INSERT of a tombstone per removed row into pyglue.deleted_rows,
-- with the primary key and the full row as jsonb (minus the sequence columns). Runs in
-- the deleting transaction, so a rolled-back delete leaves no tombstone, and for rows
-- removed by foreign-key cascades too. SECURITY DEFINER so application roles that may
-- delete rows need no rights on schema pyglue.
create or replace function pyglue._tg_log_delete()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_column name := tg_argv[0];
    v_key name[] := tg_argv[1]::name[];
    v_table text := format('%I.%I', tg_table_schema, tg_table_name);
    v_source text;
begin
    v_source := case tg_op when 'DELETE' then 'pyglue_old_rows' else v_table end;
    execute format(
        'insert into pyglue.deleted_rows (tenancy_id, table_name, primary_key, data)'
        ' select r.%I, $1, jsonb_build_object(%s),'
        '        to_jsonb(r) - ''sequence_id'' - ''should_update_sequence_id'''
        ' from %s r',
        v_tenancy_column,
        (select string_agg(format('%L, r.%I', k, k), ', ') from unnest(v_key) as k),
        v_source)
    using v_table;
    return null;
end;
$$;

comment on function pyglue._tg_log_delete() is
    'Trigger of tracked tables: write a tombstone per deleted or truncated row into pyglue.deleted_rows.';

-- copied from sql/functions/pyglue._tg_log_key_change.sql
-- pyglue._tg_log_key_change(tenancy_column, key_columns): AFTER UPDATE row trigger of
-- tracked tables, fired (by its WHEN clause) only when the primary key changes. To a
-- target the old key is gone: it gets a tombstone, stamped before the row's new version
-- like any tombstone, so the target deletes the old key and inserts the new one.
-- SECURITY DEFINER so application roles need no rights on schema pyglue.
create or replace function pyglue._tg_log_key_change()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb := to_jsonb(old) - 'sequence_id' - 'should_update_sequence_id';
begin
    insert into pyglue.deleted_rows (tenancy_id, table_name, primary_key, data)
    select (v_old ->> tg_argv[0])::uuid, format('%I.%I', tg_table_schema, tg_table_name),
           (select jsonb_object_agg(k, v_old -> k) from unnest(tg_argv[1]::name[]) as k), v_old;
    return null;
end;
$$;

comment on function pyglue._tg_log_key_change() is
    'Trigger of tracked tables: a tombstone for the old key when a row''s primary key changes.';

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
-- A primary key change writes a tombstone for the old key (row trigger, WHEN the key
-- differs), so targets drop the old key.
--
-- Tenant isolation for sync mappings: grants SELECT to pyglue_mapping_reader and adds a
-- restrictive row-level security policy for that role keyed by pyglue._fetch_tenancy()
-- (which a mapping query cannot change), called once per query through a sub-select so
-- it is an index condition next to the query's own (called per row, the planner kept
-- the email lookup of the users mapping from using tenancy and user together).
-- The policy also binds roles that inherit from the reader: grant membership with
-- NOINHERIT (owners and superusers are exempt from row-level security anyway).
-- What other roles see does not change: if row-level security
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
    execute format(
        'create or replace trigger _900_pyglue_log_key_change after update on %s for each row'
        ' when ((%s) is distinct from (%s)) execute function pyglue._tg_log_key_change(%L, %L)',
        p_table,
        (select string_agg(format('old.%I', k), ', ') from unnest(v_key) as k),
        (select string_agg(format('new.%I', k), ', ') from unnest(v_key) as k),
        p_tenancy_column, v_key::text);

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
        ' using (%I = (select pyglue._fetch_tenancy()))', p_table, p_tenancy_column);
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
    execute format('drop trigger if exists _900_pyglue_log_key_change on %s', p_table);
    if p_drop_columns then
        execute format('alter table %s drop column if exists sequence_id,'
                       ' drop column if exists should_update_sequence_id', p_table);
    end if;
    return true;
end;
$$;

comment on function pyglue.untrack_table(regclass, boolean) is
    'Stop change capture on a table (optionally dropping its sequence columns). Returns false if it was not tracked.';

-- copied from sql/functions/pyglue.sequence_changes.sql
-- pyglue.sequence_changes(p_batch_size): one sequencer pass.
--
-- Stamps flagged rows with ids of the global sequence pyglue.change_sequence and clears
-- their flags, tombstones first and then every tracked table, at most p_batch_size rows
-- of each; enqueues one sync request per affected tenancy; all in the caller's
-- transaction. When a full batch of tombstones was stamped (more may wait), the pass
-- stops there: every waiting tombstone gets a lower id than any live row stamped after
-- it, which is what makes delete-then-recreate of a key end with the row present. Rows locked by open transactions are skipped (FOR UPDATE SKIP LOCKED):
-- they keep their flag and get a higher id in a later pass, so the sequencer never waits
-- on the application.
--
-- Passes are serialized by a transaction-level advisory lock: a second caller WAITS for
-- the first to commit, then runs its own pass (it never returns 0 early). Because a pass
-- takes its ids only after the previous pass committed, ids become visible in increasing
-- order, and a reader that remembers the last id it saw never skips a row.
--
-- Returns: rows stamped (0 when nothing was flagged or the fusebox switch is off).
-- Errors: 22023 batch size below 1; 25001 not READ COMMITTED (a snapshot taken before
-- the lock would hide the previous pass).
-- Locks: advisory xact lock (pyglue.sequence_changes); FOR NO KEY UPDATE row locks on
-- stamped rows (so it does not skip rows whose children are being inserted).
create or replace function pyglue.sequence_changes(p_batch_size integer default 1000)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_table record;
    v_count bigint;
    v_total bigint := 0;
    v_tenancies uuid[];
    v_all_tenancies uuid[] := '{}';
begin
    if p_batch_size is null or p_batch_size < 1 then
        raise exception 'batch size must be at least 1, got %', p_batch_size using errcode = '22023';
    end if;
    if not (select f.sequencer_enabled from pyglue.fusebox f) then
        return 0;
    end if;
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'pyglue.sequence_changes must run in a READ COMMITTED transaction, not %',
            upper(current_setting('transaction_isolation')) using errcode = '25001';
    end if;

    perform pg_advisory_xact_lock(hashtext('pyglue.sequence_changes'));

    with picked as (
        select d.id from pyglue.deleted_rows d
        where d.should_update_sequence_id
        order by d.id
        limit p_batch_size
        for no key update skip locked
    ), stamped as (
        update pyglue.deleted_rows d
        set sequence_id = nextval('pyglue.change_sequence'), should_update_sequence_id = false
        from picked where d.id = picked.id
        returning d.tenancy_id
    )
    select count(*), coalesce(array_agg(distinct s.tenancy_id), '{}') into v_count, v_tenancies from stamped s;
    v_total := v_total + v_count;
    v_all_tenancies := v_all_tenancies || v_tenancies;

    -- a loop over tables, not rows: each table is one set-based UPDATE
    for v_table in
        select t.table_name, t.tenancy_column
        from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name
        where v_count < p_batch_size  -- tombstones may still wait: live rows go next pass
        order by t.table_name::text
    loop
        execute format(
            'with stamped as ('
            '  update %1$s t set sequence_id = nextval(''pyglue.change_sequence''), should_update_sequence_id = false'
            '  where t.ctid = any (array('
            '    select f.ctid from %1$s f where f.should_update_sequence_id limit $1 for no key update skip locked))'
            '  returning t.%2$I as tenancy_id)'
            ' select count(*), coalesce(array_agg(distinct s.tenancy_id), ''{}'') from stamped s',
            v_table.table_name, v_table.tenancy_column)
        into v_count, v_tenancies
        using p_batch_size;
        v_total := v_total + v_count;
        v_all_tenancies := v_all_tenancies || v_tenancies;
    end loop;

    if v_total > 0 then
        insert into pyglue.outgoing_requests as r (tenancy_id)
        select distinct t from unnest(v_all_tenancies) as t order by t
        on conflict (tenancy_id) where status = 'pending' do update
            set run_after = least(r.run_after, now())
            where r.attempts = 0;
    end if;
    return v_total;
end;
$$;

comment on function pyglue.sequence_changes(integer) is
    'One serialized sequencer pass: stamp flagged rows and tombstones with increasing ids, enqueue their tenancies. Returns rows stamped.';

-- copied from sql/functions/pyglue.record_sync_result.sql
-- pyglue.record_sync_result(p_target_id, p_error, ...): what the last sync of a target did.
-- Null p_error: success (failures reset, last_success_at set). Otherwise the error is kept
-- and the target backs off: retry_after = now() + least(p_max_delay, p_base_delay *
-- 2^(failures - 1)) (exponent capped at 30 so long outages cannot overflow the interval);
-- workers skip it until then, other targets are not held up.
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
                           else now() + least(p_max_delay, p_base_delay * power(2, least(t.consecutive_failures, 30))) end
    where t.id = p_target_id
    returning t.retry_after;
$$;

comment on function pyglue.record_sync_result(bigint, text, interval, interval) is
    'Record a sync success (null error) or failure of a target; failures back off exponentially. Returns retry_after.';

-- copied from sql/functions/pyglue.claim_requests.sql
-- pyglue.claim_requests(p_worker, p_limit, p_lease): take due requests, oldest first.
--
-- Due: pending with run_after reached, or claimed by a worker whose lease expired (a
-- crashed worker's claims come back this way). Tenancies another worker holds under a
-- live lease are left alone, and one call claims at most one request per tenancy (an
-- expired claim and a newer pending request of one tenancy never run side by side).
-- Concurrent claimers never block each other or take the same request (FOR UPDATE SKIP
-- LOCKED). Each claim counts as an attempt.
-- Locks: the candidate rows (SKIP LOCKED), until the caller commits.
-- Returns: the claimed requests. Errors: 22023 limit below 1 or lease not positive.
create or replace function pyglue.claim_requests(p_worker text, p_limit integer default 1,
                                                 p_lease interval default '5 minutes')
returns setof pyglue.outgoing_requests
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_limit is null or p_limit < 1 then
        raise exception 'claim limit must be at least 1, got %', p_limit using errcode = '22023';
    end if;
    if p_lease is null or p_lease <= '0' then
        raise exception 'lease must be positive, got %', p_lease using errcode = '22023';
    end if;
    return query
    with due as (
        select r.id from pyglue.outgoing_requests r
        where ((r.status = 'pending' and r.run_after <= now())
               or (r.status = 'claimed' and r.lease_expires_at < now()))
          and not exists (
              select 1 from pyglue.outgoing_requests o
              where o.tenancy_id = r.tenancy_id and o.id <> r.id
                and o.status = 'claimed' and o.lease_expires_at >= now())
        order by r.created_at, r.id
        limit p_limit
        for update of r skip locked
    ), one_per_tenancy as (
        select distinct on (o.tenancy_id) o.id
        from pyglue.outgoing_requests o join due on due.id = o.id
        order by o.tenancy_id, o.created_at, o.id
    ), claimed as (
        update pyglue.outgoing_requests r
        set status = 'claimed', claimed_by = p_worker, claimed_at = now(),
            lease_expires_at = now() + p_lease, attempts = r.attempts + 1
        from one_per_tenancy c where r.id = c.id
        returning r.*
    )
    select * from claimed order by created_at, id;
end;
$$;

comment on function pyglue.claim_requests(text, integer, interval) is
    'Claim up to p_limit due sync requests, oldest first, under a lease that expires (SKIP LOCKED).';

drop function if exists pyglue.fail_request(bigint, text, integer, interval, interval);

-- copied from sql/functions/pyglue.fail_request.sql
-- pyglue.fail_request(p_id, p_error, ...): a claimed request failed.
--
-- Below p_max_attempts it goes back to pending after a capped exponential backoff:
-- least(p_max_delay, p_base_delay * 2^(attempts - 1)). If a new pending request of the
-- tenancy was queued meanwhile, the two merge (the later run time and the higher attempt
-- count win). At p_max_attempts it becomes dead, keeping its last error; dead requests
-- are never dropped silently (see pyglue.sync_status and requeue_dead_requests).
-- With p_worker, only that worker's claim can fail (a worker whose lease expired must
-- not reset the claim of the worker that took over).
-- Returns: the request's new status, 'pending' or 'dead'.
-- Errors: P0002 the request does not exist or is not claimed (by p_worker).
-- Locks: the request row (FOR UPDATE).
create or replace function pyglue.fail_request(p_id bigint, p_error text,
                                               p_max_attempts integer default 8,
                                               p_base_delay interval default '1 second',
                                               p_max_delay interval default '10 minutes',
                                               p_worker text default null)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_request pyglue.outgoing_requests;
    v_run_after timestamptz;
begin
    select * into v_request from pyglue.outgoing_requests r
    where r.id = p_id and r.status = 'claimed' and (p_worker is null or r.claimed_by = p_worker)
    for update;
    if not found then
        raise exception 'sync request % does not exist or is not claimed%', p_id,
            case when p_worker is null then '' else ' by ' || p_worker end using errcode = 'P0002';
    end if;

    if v_request.attempts >= p_max_attempts then
        update pyglue.outgoing_requests
        set status = 'dead', dead_at = now(), last_error = p_error, lease_expires_at = null
        where id = p_id;
        return 'dead';
    end if;

    v_run_after := now() + least(p_max_delay, p_base_delay * power(2, least(greatest(v_request.attempts - 1, 0), 30)));
    begin
        update pyglue.outgoing_requests
        set status = 'pending', run_after = v_run_after, last_error = p_error,
            claimed_by = null, claimed_at = null, lease_expires_at = null
        where id = p_id;
    exception when unique_violation then
        -- a change queued a new pending request while this one ran: keep that one
        update pyglue.outgoing_requests r
        set attempts = greatest(r.attempts, v_request.attempts), last_error = p_error,
            run_after = greatest(r.run_after, v_run_after)
        where r.tenancy_id = v_request.tenancy_id and r.status = 'pending';
        delete from pyglue.outgoing_requests where id = p_id;
    end;
    return 'pending';
end;
$$;

comment on function pyglue.fail_request(bigint, text, integer, interval, interval, text) is
    'Record a failed sync request: retry with capped exponential backoff, dead after p_max_attempts (error kept).';

-- copied from sql/triggers/app.contact_channels__resync_user.sql
-- A user's synced row carries its primary email and whether it is verified, so a change
-- to a primary email channel (added, edited, removed, or made/unmade primary) flags the
-- user for the sequencer too. Users already flagged are left alone.
--
-- Inserts and deletes: statement-level with transition tables, one UPDATE per statement.
-- Updates: row-level with a WHEN clause comparing the columns the user row shows, so the
-- sequencer's own stamping of channels (which changes none of them) never calls the
-- function, never builds transition tables and never re-flags the users.
-- SECURITY DEFINER: a role allowed to change channels need not be allowed to update users.
create or replace function app.tg_contact_channels__resync_user()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_level = 'ROW' then
        update app.users u set should_update_sequence_id = true
        where u.tenancy_id = new.tenancy_id and u.id in (old.user_id, new.user_id) and not u.should_update_sequence_id;
        return null;
    end if;
    if tg_op = 'INSERT' then
        update app.users u set should_update_sequence_id = true
        from (select distinct n.tenancy_id, n.user_id from pyglue_new_channels n
              where n.type = 'email' and n.is_primary) c
        where u.tenancy_id = c.tenancy_id and u.id = c.user_id and not u.should_update_sequence_id;
    else
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
drop trigger if exists _500_resync_user_update on app.contact_channels;
create trigger _500_resync_user_update
    after update on app.contact_channels
    for each row
    when (((old.type = 'email' and old.is_primary) or (new.type = 'email' and new.is_primary))
          and (old.value, old.is_verified, old.is_primary, old.type, old.user_id)
              is distinct from (new.value, new.is_verified, new.is_primary, new.type, new.user_id))
    execute function app.tg_contact_channels__resync_user();
create or replace trigger _500_resync_user_delete
    after delete on app.contact_channels referencing old table as pyglue_old_channels
    for each statement execute function app.tg_contact_channels__resync_user();

drop policy if exists pyglue_tenancy_isolation on pyglue.deleted_rows;
create policy pyglue_tenancy_isolation on pyglue.deleted_rows as restrictive to pyglue_mapping_reader
    using (tenancy_id = (select pyglue._fetch_tenancy()));

-- re-track the app tables: new policies and the key-change trigger
select pyglue.track_table('app.users');
select pyglue.track_table('app.contact_channels');
select pyglue.track_table('app.teams');
select pyglue.track_table('app.team_members');
