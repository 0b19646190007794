-- tenant isolation (issue 8): mapping queries run over their own login, pyglue_fetch,
-- whose only privileges are those of pyglue_mapping_reader, so switching role or session
-- authorization inside a fetch has nowhere to go. The tenancy binding gains the fetch
-- session's start time (a reused pid does not inherit it). Sequencer passes serialize on a
-- row no fetch can read or lock instead of an advisory key anyone can take; each target
-- gets a random advisory lock key. sync_status lists the mappings a target syncs.
-- depends: 0010_sync_correctness

create table if not exists pyglue.sequencer_lock (
    id boolean primary key default true check (id)
);
comment on table pyglue.sequencer_lock is 'One row: sequencer passes lock it FOR UPDATE to run one at a time';
insert into pyglue.sequencer_lock default values on conflict (id) do nothing;

alter table pyglue.fetch_sessions add column if not exists backend_start timestamptz;

alter table pyglue.sync_targets add column if not exists lock_key bigint not null
    default ('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::bigint;
comment on column pyglue.sync_targets.lock_key is 'Random advisory lock key that serializes syncs into this target (not guessable by the target''s other roles)';

-- The fetch login. Roles are per server: another database (or a concurrent migration) may
-- have made it; its attributes are set every time so it never has more than the reader.
-- A migrating role that may not create roles leaves it to the operator (see README).
do $$
begin
    begin
        create role pyglue_fetch login;
    exception when duplicate_object or unique_violation then
        null;
    end;
    alter role pyglue_fetch nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit login;
    grant pyglue_mapping_reader to pyglue_fetch;
exception when insufficient_privilege then
    raise notice 'pyglue: cannot create or alter role pyglue_fetch (%); create the fetch login yourself, see README "Isolation"', sqlerrm;
end;
$$;

-- copied from sql/functions/pyglue._fetch_tenancy.sql
-- pyglue._fetch_tenancy(): the tenancy a mapping fetch may read, or null.
--
-- Mapping queries run over their own login (pyglue_fetch, or the one PYGLUE_FETCH_DSN
-- names), whose only privileges are those of pyglue_mapping_reader. Before a fetch, the
-- engine's main connection writes (the fetch session's pid and backend start, the id of
-- the fetch transaction, the tenancy) into pyglue.fetch_sessions and commits; the
-- row-level security policies of the reader compare against this function. The fetch
-- login cannot write that table or read it, and a row left for an earlier transaction
-- or an earlier session with the same pid does not count.
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
    where s.backend_pid = pg_backend_pid() and s.xact = pg_current_xact_id_if_assigned()
      and s.backend_start = (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a);
$$;

comment on function pyglue._fetch_tenancy() is
    'The tenancy the current mapping fetch may read (row-level security of pyglue_mapping_reader), or null.';

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
-- Passes are serialized by the row lock of pyglue.sequencer_lock (a row no mapping fetch
-- may read, so none can take it; an advisory lock key anyone can take was used before
-- 0011): a second caller WAITS for
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
-- Locks: the pyglue.sequencer_lock row (FOR UPDATE); FOR NO KEY UPDATE row locks on
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

    perform 1 from pyglue.sequencer_lock l for update;

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
-- tenancies) is, per mapping it syncs (every registered mapping for a target that has not
-- synced yet; a mapping used once with --mappings-dir does not stay in everyone's status).
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
        where (p_tenancy_id is null or t.tenancy_id = p_tenancy_id)
          -- the mappings this target syncs; every known one until its first sync
          and (c.target_id is not null or not exists (select 1 from pyglue.sync_cursors c2 where c2.target_id = t.id))
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
