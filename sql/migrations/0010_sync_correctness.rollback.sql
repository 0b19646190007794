-- Rollback of 0010: the definitions of 0009 come back (copies of the files as they were
-- there), with the hand-written primary-email trigger; the dependency triggers, the
-- session holder of claims and the sequence marks go.
select pyglue.untrack_dependency(d.dependent_table, d.source_table) from pyglue.dependencies d;
drop function if exists pyglue.track_dependency(regclass, regclass, name[], name[], name[]);
drop function if exists pyglue.untrack_dependency(regclass, regclass);
drop function if exists pyglue._tg_reflag_source();
drop function if exists pyglue.sync_status(uuid);
drop table if exists pyglue.dependencies;
drop table if exists pyglue.sequence_marks;

-- restored from 0009 (sql/functions/pyglue.claim_requests.sql as it was there)
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

-- restored from 0009 (sql/functions/pyglue.extend_lease.sql as it was there)
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

-- restored from 0009 (sql/functions/pyglue.record_sync_result.sql as it was there)
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

-- restored from 0009 (sql/functions/pyglue.sequence_changes.sql as it was there)
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

-- restored from 0009 (sql/functions/pyglue.sync_status.sql as it was there)
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

-- restored from 0009 (sql/functions/pyglue.untrack_table.sql as it was there)
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

-- restored from 0009 (sql/triggers/app.contact_channels__resync_user.sql as it was there)
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

drop function if exists pyglue._session_alive(integer, timestamptz);
alter table pyglue.outgoing_requests drop column if exists holder_pid, drop column if exists holder_started;
