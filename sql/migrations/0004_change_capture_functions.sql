-- change capture functions: track_table, the sequencer, the queue and the fusebox, copied
-- from sql/functions and sql/triggers (the drift test keeps the copies equal to the files).
-- depends: 0003_change_capture_tables

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

-- copied from sql/functions/pyglue.untrack_table.sql
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

-- copied from sql/functions/pyglue._tg_flag_change.sql
-- pyglue._tg_flag_change(): BEFORE UPDATE row trigger of tracked tables (see track_table).
-- The trigger's WHEN clause already limits it to application updates of synced rows;
-- this only sets the flag the sequencer looks for.
create or replace function pyglue._tg_flag_change()
returns trigger
language plpgsql
as $$
begin
    new.should_update_sequence_id := true;
    return new;
end;
$$;

comment on function pyglue._tg_flag_change() is
    'Trigger of tracked tables: flag a changed row for the sequencer.';

-- copied from sql/functions/pyglue._tg_log_delete.sql
-- pyglue._tg_log_delete(tenancy_column, key_columns): statement trigger of tracked tables.
--
-- AFTER DELETE (with the transition table pyglue_old_rows) and BEFORE TRUNCATE (reading
-- the whole table): one INSERT of a tombstone per removed row into pyglue.deleted_rows,
-- with the primary key and the full row as jsonb (minus the sequence columns). Runs in
-- the deleting transaction, so a rolled-back delete leaves no tombstone, and for rows
-- removed by foreign-key cascades too.
create or replace function pyglue._tg_log_delete()
returns trigger
language plpgsql
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

-- copied from sql/functions/pyglue.sequence_changes.sql
-- pyglue.sequence_changes(p_batch_size): one sequencer pass.
--
-- Stamps flagged rows with ids of the global sequence pyglue.change_sequence and clears
-- their flags, tombstones first and then every tracked table, at most p_batch_size rows
-- of each; enqueues one sync request per affected tenancy; all in the caller's
-- transaction. Rows locked by open transactions are skipped (FOR UPDATE SKIP LOCKED):
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
-- Locks: advisory xact lock (pyglue.sequence_changes); row locks on stamped rows.
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
        for update skip locked
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
        order by t.table_name::text
    loop
        execute format(
            'with stamped as ('
            '  update %1$s t set sequence_id = nextval(''pyglue.change_sequence''), should_update_sequence_id = false'
            '  where t.ctid = any (array('
            '    select f.ctid from %1$s f where f.should_update_sequence_id limit $1 for update skip locked))'
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

-- copied from sql/functions/pyglue.pending_changes.sql
-- pyglue.pending_changes(): rows waiting for the sequencer, per tracked table and for
-- tombstones ('pyglue.deleted_rows'). Counts rows through the partial flagged indexes.
-- Returns: (table_name, pending) for every tracked table, zeros included.
create or replace function pyglue.pending_changes()
returns table (table_name text, pending bigint)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_table regclass;
begin
    table_name := 'pyglue.deleted_rows';
    select count(*) into pending from pyglue.deleted_rows d where d.should_update_sequence_id;
    return next;
    for v_table in
        select t.table_name from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name
        order by t.table_name::text
    loop
        table_name := v_table::text;
        execute format('select count(*) from %s where should_update_sequence_id', v_table) into pending;
        return next;
    end loop;
end;
$$;

comment on function pyglue.pending_changes() is
    'Rows flagged for the sequencer, per tracked table and for tombstones.';

-- copied from sql/functions/pyglue.enqueue_sync.sql
-- pyglue.enqueue_sync(p_tenancy_id, p_delay): ask for a sync of one tenancy.
--
-- At most one pending request per tenancy (partial unique index): a second call returns
-- the pending one. A request already claimed by a worker does not count, so a change
-- made while a sync runs is queued behind it. A pending request that is only scheduled
-- (never failed) is pulled forward to the earlier time; one backing off after failures
-- keeps its delay. The insert NOTIFYs pyglue_requests (trigger on the table).
-- Returns: the id of the tenancy's pending request.
create or replace function pyglue.enqueue_sync(p_tenancy_id uuid, p_delay interval default '0')
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
    insert into pyglue.outgoing_requests as r (tenancy_id, run_after)
    values (p_tenancy_id, now() + greatest(coalesce(p_delay, '0'), '0'))
    on conflict (tenancy_id) where status = 'pending' do update
        set run_after = least(r.run_after, excluded.run_after)
        where r.attempts = 0
    returning r.id into v_id;
    if v_id is null then
        select r.id into v_id from pyglue.outgoing_requests r
        where r.tenancy_id = p_tenancy_id and r.status = 'pending';
    end if;
    return v_id;
end;
$$;

comment on function pyglue.enqueue_sync(uuid, interval) is
    'Queue a sync of a tenancy (deduplicated: one pending request per tenancy). Returns the request id.';

-- copied from sql/functions/pyglue.claim_requests.sql
-- pyglue.claim_requests(p_worker, p_limit, p_lease): take due requests, oldest first.
--
-- Due: pending with run_after reached, or claimed by a worker whose lease expired (a
-- crashed worker's claims come back this way). Tenancies another worker holds under a
-- live lease are left alone. Concurrent claimers never block each other or take the
-- same request (FOR UPDATE SKIP LOCKED). Each claim counts as an attempt.
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
    )
    update pyglue.outgoing_requests r
    set status = 'claimed', claimed_by = p_worker, claimed_at = now(),
        lease_expires_at = now() + p_lease, attempts = r.attempts + 1
    from due where r.id = due.id
    returning r.*;
end;
$$;

comment on function pyglue.claim_requests(text, integer, interval) is
    'Claim up to p_limit due sync requests, oldest first, under a lease that expires (SKIP LOCKED).';

-- copied from sql/functions/pyglue.complete_request.sql
-- pyglue.complete_request(p_id, p_worker): a claimed request is done; it is removed.
-- With p_worker, only that worker's claim is completed (a worker whose lease expired
-- and was re-claimed by another must not complete it). Returns false when nothing matched.
create or replace function pyglue.complete_request(p_id bigint, p_worker text default null)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with done as (
        delete from pyglue.outgoing_requests r
        where r.id = p_id and r.status = 'claimed' and (p_worker is null or r.claimed_by = p_worker)
        returning 1
    )
    select exists (select 1 from done);
$$;

comment on function pyglue.complete_request(bigint, text) is
    'Finish a claimed sync request (removes it). Returns false if it was not claimed (by p_worker).';

-- copied from sql/functions/pyglue.fail_request.sql
-- pyglue.fail_request(p_id, p_error, ...): a claimed request failed.
--
-- Below p_max_attempts it goes back to pending after a capped exponential backoff:
-- least(p_max_delay, p_base_delay * 2^(attempts - 1)). If a new pending request of the
-- tenancy was queued meanwhile, the two merge (the later run time and the higher attempt
-- count win). At p_max_attempts it becomes dead, keeping its last error; dead requests
-- are never dropped silently (see pyglue.sync_status and requeue_dead_requests).
-- Returns: the request's new status, 'pending' or 'dead'.
-- Errors: P0002 the request does not exist or is not claimed.
create or replace function pyglue.fail_request(p_id bigint, p_error text,
                                               p_max_attempts integer default 8,
                                               p_base_delay interval default '1 second',
                                               p_max_delay interval default '10 minutes')
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_request pyglue.outgoing_requests;
    v_run_after timestamptz;
begin
    select * into v_request from pyglue.outgoing_requests r
    where r.id = p_id and r.status = 'claimed'
    for update;
    if not found then
        raise exception 'sync request % does not exist or is not claimed', p_id using errcode = 'P0002';
    end if;

    if v_request.attempts >= p_max_attempts then
        update pyglue.outgoing_requests
        set status = 'dead', dead_at = now(), last_error = p_error, lease_expires_at = null
        where id = p_id;
        return 'dead';
    end if;

    v_run_after := now() + least(p_max_delay, p_base_delay * power(2, greatest(v_request.attempts - 1, 0)));
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

comment on function pyglue.fail_request(bigint, text, integer, interval, interval) is
    'Record a failed sync request: retry with capped exponential backoff, dead after p_max_attempts (error kept).';

-- copied from sql/functions/pyglue.requeue_dead_requests.sql
-- pyglue.requeue_dead_requests(p_tenancy_id): give dead requests another chance after
-- the cause was fixed. Each dead request of the tenancy (all tenancies when null) is
-- removed and its tenancy enqueued afresh (attempts 0). Returns how many were requeued.
create or replace function pyglue.requeue_dead_requests(p_tenancy_id uuid default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy uuid;
    v_count bigint := 0;
begin
    for v_tenancy in
        delete from pyglue.outgoing_requests r
        where r.status = 'dead' and (p_tenancy_id is null or r.tenancy_id = p_tenancy_id)
        returning r.tenancy_id
    loop
        perform pyglue.enqueue_sync(v_tenancy);
        v_count := v_count + 1;
    end loop;
    return v_count;
end;
$$;

comment on function pyglue.requeue_dead_requests(uuid) is
    'Requeue dead sync requests (of one tenancy, or all) with fresh attempts. Returns how many.';

-- copied from sql/functions/pyglue.set_fusebox.sql
-- pyglue.set_fusebox(p_sequencer, p_poller, p_sync): flip the kill switches.
-- A null argument leaves that switch as it is. The sequencer, the request poller and
-- the sync engine each read their switch before every pass or page.
-- Returns: the fusebox row after the change.
create or replace function pyglue.set_fusebox(p_sequencer boolean default null,
                                              p_poller boolean default null,
                                              p_sync boolean default null)
returns pyglue.fusebox
language sql
set search_path = pg_catalog, pg_temp
as $$
    update pyglue.fusebox f
    set sequencer_enabled = coalesce(p_sequencer, f.sequencer_enabled),
        poller_enabled = coalesce(p_poller, f.poller_enabled),
        sync_enabled = coalesce(p_sync, f.sync_enabled),
        updated_at = now()
    returning f.*;
$$;

comment on function pyglue.set_fusebox(boolean, boolean, boolean) is
    'Turn the sequencer, poller and sync switches on or off (null leaves a switch as is).';

-- copied from sql/functions/pyglue.purge_deleted_rows.sql
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

-- copied from sql/triggers/pyglue.outgoing_requests__notify.sql
-- Wake workers when work is queued: one NOTIFY pyglue_requests per inserting statement
-- (Postgres folds identical notifications of one transaction into one). Workers LISTEN
-- and fall back to a timed wake-up for backoffs, so a lost notification only delays.
create or replace function pyglue.tg_outgoing_requests__notify()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('pyglue_requests', '');
    return null;
end;
$$;

comment on function pyglue.tg_outgoing_requests__notify() is
    'Trigger: NOTIFY pyglue_requests when sync requests are queued.';

create or replace trigger _500_notify
    after insert on pyglue.outgoing_requests
    for each statement execute function pyglue.tg_outgoing_requests__notify();
