-- sync correctness (issue 7): a sequencer pass stamps only what one snapshot saw, so a
-- delete + re-create can never put a row before its tombstone; mappings that read other
-- tables declare them (pyglue.track_dependency) and the re-flag triggers lock the rows
-- they concern, also rows already flagged, so an open transaction's change is never
-- stamped with the old data (replaces the hand-written contact_channels trigger of 0008);
-- a claim lives with the session that holds it, so a killed worker's tenancies come back
-- in seconds; per-second sequence marks give status a real lag; targets back off 15 s at
-- most; status says whether a target is failing (sync_status gains two columns, so it is
-- dropped and created again).
-- depends: 0009_review_fixes

alter table pyglue.outgoing_requests
    add column if not exists holder_pid integer,
    add column if not exists holder_started timestamptz;
comment on column pyglue.outgoing_requests.holder_pid is 'Backend pid of the session working on a claim (with holder_started): the claim is free when that session is gone';

create table if not exists pyglue.sequence_marks (
    stamped_at timestamptz primary key,
    last_id    bigint not null
);
create index if not exists sequence_marks_last_id_idx on pyglue.sequence_marks (last_id);
comment on table pyglue.sequence_marks is 'Per second in which the sequencer stamped rows, the highest id it handed out (kept 30 days)';

create table if not exists pyglue.dependencies (
    dependent_table regclass not null,
    source_table    regclass not null,
    columns         name[] not null,
    source_columns  name[] not null,
    watch_columns   name[] not null,
    updated_at      timestamptz not null default now(),
    primary key (dependent_table, source_table)
);
comment on table pyglue.dependencies is 'Tables a mapping reads beside its source table, and how their rows lead to source rows (pyglue.track_dependency)';

drop trigger if exists _500_resync_user_insert on app.contact_channels;
drop trigger if exists _500_resync_user_update on app.contact_channels;
drop trigger if exists _500_resync_user_delete on app.contact_channels;
drop function if exists app.tg_contact_channels__resync_user();
drop function if exists pyglue.sync_status(uuid);

-- copied from sql/functions/pyglue._session_alive.sql
-- pyglue._session_alive(p_pid, p_started): whether the database session that holds a
-- claim still exists (same pid and start time, so a reused pid does not count). A claim
-- with no recorded session (p_pid null), or a session whose start time this role may not
-- see, counts as alive: then only the lease decides.
-- SECURITY DEFINER: reads pg_stat_get_activity as the owner, who may see every session.
create or replace function pyglue._session_alive(p_pid integer, p_started timestamptz)
returns boolean
language sql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
    select p_pid is null or exists (
        select 1 from pg_stat_get_activity(p_pid) a
        where a.pid = p_pid and (a.backend_start = p_started or a.backend_start is null));
$$;

comment on function pyglue._session_alive(integer, timestamptz) is
    'Whether the session (pid, start time) holding a claim still exists.';

-- copied from sql/functions/pyglue.claim_requests.sql
-- pyglue.claim_requests(p_worker, p_limit, p_lease): take due requests, oldest first.
--
-- Due: pending with run_after reached, or claimed by a worker whose lease expired or
-- whose database session is gone (a killed worker's claims come back as soon as the server
-- has closed its connections; the lease is the fallback for a worker that hangs while
-- connected). The claiming session is recorded as the holder (pyglue.extend_lease moves
-- it to the session that does the work). Tenancies another worker holds under a
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
               or (r.status = 'claimed' and (r.lease_expires_at < now()
                                              or not pyglue._session_alive(r.holder_pid, r.holder_started))))
          and not exists (
              select 1 from pyglue.outgoing_requests o
              where o.tenancy_id = r.tenancy_id and o.id <> r.id
                and o.status = 'claimed' and o.lease_expires_at >= now()
                and pyglue._session_alive(o.holder_pid, o.holder_started))
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
            lease_expires_at = now() + p_lease, attempts = r.attempts + 1,
            holder_pid = pg_backend_pid(),
            holder_started = (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a)
        from one_per_tenancy c where r.id = c.id
        returning r.*
    )
    select * from claimed order by created_at, id;
end;
$$;

comment on function pyglue.claim_requests(text, integer, interval) is
    'Claim up to p_limit due sync requests, oldest first, under a lease that expires (SKIP LOCKED).';

-- copied from sql/functions/pyglue.extend_lease.sql
-- pyglue.extend_lease(p_id, p_worker, p_lease): a worker still busy with a request renews
-- its lease, so a long sync is not handed to another worker, and makes the calling
-- session the claim's holder: when that session ends (the worker was killed), the claim
-- is free at once (pyglue.claim_requests). Returns false when the request is no longer
-- claimed by p_worker (its lease expired or its holder died, and someone took it).
create or replace function pyglue.extend_lease(p_id bigint, p_worker text, p_lease interval default '5 minutes')
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with renewed as (
        update pyglue.outgoing_requests r
        set lease_expires_at = now() + p_lease, holder_pid = pg_backend_pid(),
            holder_started = (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a)
        where r.id = p_id and r.status = 'claimed' and r.claimed_by = p_worker
        returning 1
    )
    select exists (select 1 from renewed);
$$;

comment on function pyglue.extend_lease(bigint, text, interval) is
    'Renew the lease of a claimed sync request. Returns false if the worker no longer holds it.';

-- copied from sql/functions/pyglue.record_sync_result.sql
-- pyglue.record_sync_result(p_target_id, p_error, ...): what the last sync of a target did.
-- Null p_error: success (failures reset, last_success_at set). Otherwise the error is kept
-- and the target backs off: retry_after = now() + least(p_max_delay, p_base_delay *
-- 2^(failures - 1)) (exponent capped at 30 so long outages cannot overflow the interval);
-- workers skip it until then, other targets are not held up. The cap is short (15 s): a
-- retry costs one connection attempt, and a target back from an outage should not wait
-- minutes. last_error and last_error_at are kept after a success (the history);
-- consecutive_failures > 0 is what "failing" means.
-- Returns: retry_after (null after a success).
create or replace function pyglue.record_sync_result(p_target_id bigint, p_error text default null,
                                                     p_base_delay interval default '2 seconds',
                                                     p_max_delay interval default '15 seconds')
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

-- copied from sql/functions/pyglue.sequence_changes.sql
-- pyglue.sequence_changes(p_batch_size): one sequencer pass.
--
-- Stamps flagged rows with ids of the global sequence pyglue.change_sequence and clears
-- their flags, tombstones first and then every tracked table, at most p_batch_size rows
-- of each; enqueues one sync request per affected tenancy; all in the caller's
-- transaction. Rows locked by open transactions are skipped (SKIP LOCKED): they keep
-- their flag and get a higher id in a later pass, so the sequencer never waits on the
-- application.
--
-- One snapshot decides what a pass stamps. The pass first lists its candidates, the
-- flagged tombstones and the flagged row versions of every tracked table, in ONE
-- statement, and then stamps only those versions (same ctid and xmin). A tombstone is
-- committed no later than the re-creation of its key, so whenever a re-created row is a
-- candidate its tombstone is one too and gets the lower id; a row version committed after
-- that snapshot (a re-insert, or an update that changed the key back) waits for the next
-- pass, behind its tombstones. Stamping each table in its own statement with its own
-- snapshot (what this function did before 0010) let a delete + re-create that committed
-- between two statements stamp the row before its tombstone, and the target deleted it.
-- When tombstones may be left over (a full batch, or one locked), live rows wait too.
--
-- Passes are serialized by a transaction-level advisory lock: a second caller WAITS for
-- the first to commit, then runs its own pass (it never returns 0 early). Because a pass
-- takes its ids only after the previous pass committed, ids become visible in increasing
-- order, and a reader that remembers the last id it saw never skips a row.
--
-- Each pass that stamps rows records the second it ran in pyglue.sequence_marks (kept 30
-- days), so pyglue.sync_status can tell how long ago the oldest unapplied change was
-- stamped.
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
    v_tables regclass[];
    v_tenancy_columns name[];
    v_candidates text;
    v_kind integer[];
    v_ctid tid[];
    v_xmin xid[];
    v_tombstones integer;
    v_i integer;
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

    select coalesce(array_agg(t.table_name order by t.table_name::text), '{}'),
           coalesce(array_agg(t.tenancy_column order by t.table_name::text), '{}')
    into v_tables, v_tenancy_columns
    from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name;

    -- the candidates, in one statement: kind 0 = tombstones, i = the i-th tracked table
    select string_agg(format('(select %s as kind, f.ctid, f.xmin from %s f where f.should_update_sequence_id limit $1)',
                             i, v_tables[i]), ' union all ')
    into v_candidates
    from generate_subscripts(v_tables, 1) as i;
    execute 'select coalesce(array_agg(c.kind), ''{}''), coalesce(array_agg(c.ctid), ''{}''),'
            '       coalesce(array_agg(c.xmin), ''{}'') from ('
            '(select 0 as kind, d.ctid, d.xmin from pyglue.deleted_rows d'
            '  where d.should_update_sequence_id order by d.id limit $1)'
            || coalesce(' union all ' || v_candidates, '') || ') c'
    into v_kind, v_ctid, v_xmin
    using p_batch_size;

    -- tombstones, in the order they were written
    with candidate as (
        select u.ctid, u.xmin from unnest(v_kind, v_ctid, v_xmin) as u(kind, ctid, xmin) where u.kind = 0
    ), picked as (
        select d.id from candidate c join pyglue.deleted_rows d on d.ctid = c.ctid
        where d.xmin = c.xmin and d.should_update_sequence_id
        order by d.id
        for no key update of d skip locked
    ), numbered as (
        select p.id, nextval('pyglue.change_sequence') as sequence_id from picked p
    ), stamped as (
        update pyglue.deleted_rows d
        set sequence_id = n.sequence_id, should_update_sequence_id = false
        from numbered n where d.id = n.id
        returning d.tenancy_id
    )
    select count(*), coalesce(array_agg(distinct s.tenancy_id), '{}') into v_count, v_tenancies from stamped s;
    v_total := v_total + v_count;
    v_all_tenancies := v_all_tenancies || v_tenancies;
    v_tombstones := (select count(*) from unnest(v_kind) as k where k = 0);

    -- live rows only when no tombstone of this snapshot is left for a later pass
    if v_count = v_tombstones and v_tombstones < p_batch_size then
        -- a loop over tables, not rows: each table is one set-based UPDATE
        for v_i in 1 .. coalesce(array_length(v_tables, 1), 0) loop
            continue when not (v_i = any (v_kind));
            execute format(
                'with stamped as ('
                '  update %1$s t set sequence_id = nextval(''pyglue.change_sequence''), should_update_sequence_id = false'
                '  where t.ctid = any (array('
                '    select f.ctid from unnest($1, $2, $3) as c(kind, ctid, xmin) join %1$s f on f.ctid = c.ctid'
                '    where c.kind = $4 and f.xmin = c.xmin and f.should_update_sequence_id'
                '    for no key update of f skip locked))'
                '  returning t.%2$I as tenancy_id)'
                ' select count(*), coalesce(array_agg(distinct s.tenancy_id), ''{}'') from stamped s',
                v_tables[v_i], v_tenancy_columns[v_i])
            into v_count, v_tenancies
            using v_kind, v_ctid, v_xmin, v_i;
            v_total := v_total + v_count;
            v_all_tenancies := v_all_tenancies || v_tenancies;
        end loop;
    end if;

    if v_total > 0 then
        -- when ids were handed out (one row per second), for the age of unapplied changes
        insert into pyglue.sequence_marks as m (stamped_at, last_id)
        values (date_trunc('second', now()), currval('pyglue.change_sequence'))
        on conflict (stamped_at) do update set last_id = greatest(m.last_id, excluded.last_id);
        delete from pyglue.sequence_marks m where m.stamped_at < now() - interval '30 days';
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

-- copied from sql/functions/pyglue.sync_status.sql
-- pyglue.sync_status(p_tenancy_id): how far each target of a tenancy (or of all
-- tenancies) is, per mapping.
--
-- pending_rows counts rows, not id differences: rows of the mapping's source table and
-- its tombstones that are past the target's cursor or not yet sequenced (index scans on
-- (tenancy, sequence_id) and the flagged partial index). Queue columns describe the
-- tenancy's requests: queue_depth (pending + claimed), dead_requests, and the age of the
-- oldest pending one. failing: the target's last sync failed (last_error and
-- last_error_at stay as history after a success). oldest_unapplied_age: how long ago the
-- oldest change past the target's cursor was sequenced (null when there is none yet),
-- which is the target's lag. Never shows connection strings.
create or replace function pyglue.sync_status(p_tenancy_id uuid default null)
returns table (
    tenancy_id uuid, target_name text, enabled boolean, mapping_name text,
    last_synced_sequence_id bigint, pending_rows bigint, last_success_at timestamptz,
    last_error text, last_error_at timestamptz, retry_after timestamptz,
    queue_depth bigint, dead_requests bigint, oldest_pending_age interval,
    failing boolean, oldest_unapplied_age interval)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row record;
    v_live bigint;
    v_dead bigint;
    v_oldest bigint;
begin
    for v_row in
        select t.id as target_id, t.tenancy_id, t.name, t.enabled, t.last_success_at, t.last_error,
               t.last_error_at, t.retry_after, t.consecutive_failures > 0 as failing, m.name as mapping_name, m.source_table,
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
        execute format('select min(sequence_id) from %s where %I = $1 and sequence_id > $2',
                       v_row.source_table, v_row.tenancy_column)
        into v_oldest using v_row.tenancy_id, v_row.cursor;
        v_oldest := least(v_oldest, (select min(d.sequence_id) from pyglue.deleted_rows d
                                     where d.tenancy_id = v_row.tenancy_id and d.table_name = v_row.source_table
                                       and d.sequence_id > v_row.cursor));
        oldest_unapplied_age := now() - (select m.stamped_at from pyglue.sequence_marks m
                                         where m.last_id >= v_oldest order by m.last_id limit 1);
        failing := v_row.failing;
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
    'Per sync target and mapping: cursor, pending changes in rows, last success and error, whether failing, lag, queue depth, dead requests.';

-- copied from sql/functions/pyglue.track_dependency.sql
-- pyglue.track_dependency(p_table, p_source, p_columns, p_source_columns, p_watch):
-- re-flag rows of a tracked table when rows of another table they are synced with change.
--
-- A mapping that reads a second table (the users mapping reads each user's primary email
-- from app.contact_channels) declares it; this installs triggers on p_table that flag the
-- p_source rows whose p_source_columns equal the changed row's p_columns (old and new
-- values, so a row moved from one source row to another flags both): statement triggers
-- with transition tables for INSERT and DELETE, a row trigger for UPDATE limited by its
-- WHEN clause to changes of p_watch or p_columns (default: every column but the sequencer's),
-- so the sequencer's own stamping of p_table never re-flags anything.
--
-- Correct under concurrency: the trigger takes a row lock on every source row it concerns,
-- also on rows already flagged, in the writing transaction. The sequencer skips locked rows
-- (SKIP LOCKED), so it cannot stamp a source row while a transaction that changes what the
-- mapping reads for it is still open, and stamp it with the old data read; after the
-- commit the row is still flagged and a later pass stamps it.
--
-- Idempotent: an identical declaration changes nothing (no DDL, no lock); a changed one
-- replaces the triggers. Returns true when triggers were (re)installed.
-- Errors: 22023 p_source not tracked, p_table in schema pyglue or equal to p_source,
-- column lists empty or of different lengths; 42703 a column that does not exist.
-- Locks: SHARE ROW EXCLUSIVE on p_table while its triggers are created.
create or replace function pyglue.track_dependency(p_table regclass, p_source regclass, p_columns name[],
                                                   p_source_columns name[], p_watch name[] default null)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_watch name[];
    v_missing text;
    v_prefix text := '_500_pyglue_reflag_' || left(md5(p_source::text), 8);
    v_args text;
begin
    if not exists (select 1 from pyglue.tracked_tables t where t.table_name = p_source) then
        raise exception 'cannot track a dependency of %: it is not tracked (call pyglue.track_table first)', p_source
            using errcode = '22023';
    end if;
    if p_table = p_source or (select c.relnamespace::regnamespace::text from pg_class c where c.oid = p_table) = 'pyglue' then
        raise exception 'cannot track % as a dependency of %', p_table, p_source using errcode = '22023';
    end if;
    if coalesce(cardinality(p_columns), 0) = 0 or cardinality(p_columns) <> coalesce(cardinality(p_source_columns), 0) then
        raise exception 'dependency % -> %: columns % and % must be non-empty lists of the same length',
            p_table, p_source, p_columns, p_source_columns using errcode = '22023';
    end if;
    select string_agg(format('%s.%I', x.tab, x.col), ', ') into v_missing
    from (select p_table as tab, unnest(p_columns || coalesce(p_watch, '{}')) as col
          union all select p_source, unnest(p_source_columns)) x
    where not exists (select 1 from pg_attribute a
                      where a.attrelid = x.tab and a.attname = x.col and a.attnum > 0 and not a.attisdropped);
    if v_missing is not null then
        raise exception 'dependency % -> %: no column %', p_table, p_source, v_missing using errcode = '42703';
    end if;

    select array_agg(a.attname order by a.attnum) into v_watch
    from pg_attribute a
    where a.attrelid = p_table and a.attnum > 0 and not a.attisdropped
      and a.attname not in ('sequence_id', 'should_update_sequence_id')
      and (p_watch is null or a.attname = any (p_watch || p_columns));

    if exists (select 1 from pyglue.dependencies d
               where d.dependent_table = p_table and d.source_table = p_source and d.columns = p_columns
                 and d.source_columns = p_source_columns and d.watch_columns = v_watch) then
        return false;
    end if;

    v_args := format('%L, %L, %L', p_source::text, p_columns::text, p_source_columns::text);
    execute format('create or replace trigger %I after insert on %s referencing new table as pyglue_dependent_rows'
                   ' for each statement execute function pyglue._tg_reflag_source(%s)',
                   v_prefix || '_insert', p_table, v_args);
    execute format('create or replace trigger %I after delete on %s referencing old table as pyglue_dependent_rows'
                   ' for each statement execute function pyglue._tg_reflag_source(%s)',
                   v_prefix || '_delete', p_table, v_args);
    execute format('create or replace trigger %I after update on %s for each row when ((%s) is distinct from (%s))'
                   ' execute function pyglue._tg_reflag_source(%s)',
                   v_prefix || '_update', p_table,
                   (select string_agg(format('old.%I', c), ', ') from unnest(v_watch) as c),
                   (select string_agg(format('new.%I', c), ', ') from unnest(v_watch) as c),
                   v_args);
    insert into pyglue.dependencies as d (dependent_table, source_table, columns, source_columns, watch_columns)
    values (p_table, p_source, p_columns, p_source_columns, v_watch)
    on conflict (dependent_table, source_table) do update
        set columns = excluded.columns, source_columns = excluded.source_columns,
            watch_columns = excluded.watch_columns, updated_at = now();
    return true;
end;
$$;

comment on function pyglue.track_dependency(regclass, regclass, name[], name[], name[]) is
    'Re-flag rows of a tracked table when the rows of another table that a mapping reads for them change. Idempotent.';

-- copied from sql/functions/pyglue.untrack_dependency.sql
-- pyglue.untrack_dependency(p_table, p_source): drop the triggers track_dependency
-- installed on p_table for p_source. Returns false when there was no such dependency.
-- Locks: SHARE ROW EXCLUSIVE on p_table while its triggers are dropped.
create or replace function pyglue.untrack_dependency(p_table regclass, p_source regclass)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_prefix text := '_500_pyglue_reflag_' || left(md5(p_source::text), 8);
begin
    delete from pyglue.dependencies d where d.dependent_table = p_table and d.source_table = p_source;
    if not found then
        return false;
    end if;
    execute format('drop trigger if exists %I on %s', v_prefix || '_insert', p_table);
    execute format('drop trigger if exists %I on %s', v_prefix || '_delete', p_table);
    execute format('drop trigger if exists %I on %s', v_prefix || '_update', p_table);
    return true;
end;
$$;

comment on function pyglue.untrack_dependency(regclass, regclass) is
    'Remove a dependency installed by pyglue.track_dependency. Returns false if there was none.';

-- copied from sql/functions/pyglue._tg_reflag_source.sql
-- pyglue._tg_reflag_source(source_table, columns, source_columns): trigger installed by
-- pyglue.track_dependency on a table a mapping reads beside its source table.
--
-- Flags the source rows that the changed rows lead to (source_columns = columns), old
-- and new versions alike. In two statements: rows already flagged are only locked (FOR
-- NO KEY UPDATE; no new row version), the others are flagged, which locks them too. The
-- lock lasts until the writing transaction ends, so the sequencer (SKIP LOCKED) cannot
-- stamp such a row and a sync read it without this transaction's change; a row the
-- sequencer is stamping right now is waited for, then flagged again.
-- Statement level (INSERT, DELETE): the rows come from the transition table
-- pyglue_dependent_rows. Row level (UPDATE): OLD and NEW.
-- SECURITY DEFINER: a role allowed to write the dependent table need not be allowed to
-- update the source table.
create or replace function pyglue._tg_reflag_source()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_source regclass := tg_argv[0]::regclass;
    v_columns name[] := tg_argv[1]::name[];
    v_source_columns name[] := tg_argv[2]::name[];
    v_rows text;
    v_match text;
    v_lock text;
    v_flag text;
begin
    v_rows := format('select distinct %s from %s',
                     (select string_agg(format('r.%I', c), ', ') from unnest(v_columns) as c),
                     case when tg_level = 'ROW' then 'unnest(array[$1, $2]) as r' else 'pyglue_dependent_rows r' end);
    v_match := (select string_agg(format('s.%I = k.%I', s, c), ' and ')
                from unnest(v_source_columns, v_columns) as x(s, c));
    v_lock := format('select 1 from %s s join (%s) k on %s where s.should_update_sequence_id'
                     ' for no key update of s', v_source, v_rows, v_match);
    v_flag := format('update %s s set should_update_sequence_id = true from (%s) k'
                     ' where %s and not s.should_update_sequence_id', v_source, v_rows, v_match);
    if tg_level = 'ROW' then
        execute v_lock using old, new;
        execute v_flag using old, new;
    else
        execute v_lock;
        execute v_flag;
    end if;
    return null;
end;
$$;

comment on function pyglue._tg_reflag_source() is
    'Trigger installed by pyglue.track_dependency: flag (and lock) the source rows a changed dependent row leads to.';

-- copied from sql/functions/pyglue.untrack_table.sql
-- pyglue.untrack_table(p_table, p_drop_columns): stop capturing changes of a table.
--
-- Drops the pyglue triggers and policies (turning row-level security off again if
-- track_table turned it on) and the dependencies declared for it, and forgets the table; with p_drop_columns also drops
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
    perform pyglue.untrack_dependency(d.dependent_table, d.source_table)
    from pyglue.dependencies d where d.source_table = p_table;
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

-- the users mapping reads each user's primary email from app.contact_channels
select pyglue.track_dependency('app.contact_channels', 'app.users', '{tenancy_id,user_id}', '{tenancy_id,id}',
                               '{type,value,is_primary,is_verified}');
