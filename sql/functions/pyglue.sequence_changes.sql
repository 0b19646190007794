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
-- statement, and then stamps only those versions (same ctid and xmin). A table's flagged
-- rows are found through its entries in pyglue.changed_rows, oldest first (since 0025;
-- track_table's log triggers write them in the transaction that flags the row, so an
-- entry is visible exactly when its row version is), not through an index on the flag.
-- Each entry's row is looked up by primary key, in the listing through a lateral subquery
-- with LIMIT 1 and in the delete below through a scalar subquery: neither can be planned as
-- a join that reads the whole table, whatever the statistics say about the log. A tombstone is
-- committed no later than the re-creation of its key, so whenever a re-created row is a
-- candidate its tombstone is one too and gets the lower id; a row version committed after
-- that snapshot (a re-insert, or an update that changed the key back) waits for the next
-- pass, behind its tombstones. Stamping each table in its own statement with its own
-- snapshot (what this function did before 0010) let a delete + re-create that committed
-- between two statements stamp the row before its tombstone, and the target deleted it.
-- When tombstones may be left over (a full batch, or one locked), live rows wait too.
-- The stamping step looks each candidate up by its ctid (a lateral subquery per candidate:
-- its row lock keeps the planner from flattening it), never by the flag: the statistics of
-- a quiet system say almost no row is flagged, and a join of a burst of candidates to the
-- flagged rows was planned as a nested loop of both (5,000 x 5,000 in 4 s; before 0023).
-- The flag needs no second look: the version with that ctid and xmin is the one listed,
-- and a flag only changes with a new version.
-- The log is a queue table: every stamp deletes an entry, and until a vacuum the dead
-- entries stay in its heap (autovacuum looks once a minute: at 10k changes/s that is up to
-- 600k of them). The function runs with seq and bitmap scans off, so the listing walks the
-- log's primary key (table_name, id) in order and stops after the batch; the statistics of
-- a log of short-lived entries otherwise got it a Seq Scan + Sort of the whole heap. On
-- Debian PG 15 with 600k dead entries, a pass of 500 rows took 38-55 ms that way and 21-30
-- ms by the key (since 0027). Every other statement of a pass goes by primary key, ctid or
-- the partial flagged index of the tombstones anyway, and so do the tracked tables' triggers
-- that the stamps fire (they read transition tables and look rows up by key; the settings
-- apply to them too, and a plan cached there keeps them). JIT is off too: with seq scans off,
-- the cost of reading the one-row fusebox and lock tables crosses jit_above_cost, and a
-- server with JIT on compiled those statements (85 ms a pass).
-- After a table is stamped, the pass deletes the entries it listed whose row is no longer
-- flagged (stamped, deleted, or its key changed); an entry of a row skipped because it was
-- locked stays for the next pass, and a row flagged again later has an entry of its own.
-- Candidates are listed without locks, so a row locked by an open transaction is skipped
-- in the stamping step, not replaced by another: if a whole batch of one table's
-- candidates is locked (a long transaction updating that many flagged rows), that table
-- waits for it to end; other tables go on. Nothing is lost, only delayed.
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
-- stamped rows (so it does not skip rows whose children are being inserted); row locks on
-- the deleted entries of pyglue.changed_rows.
create or replace function pyglue.sequence_changes(p_batch_size integer default 1000)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
set enable_bitmapscan = off
set jit = off
as $$
declare
    v_tables regclass[];
    v_tenancy_columns name[];
    v_matches text[];
    v_candidates text;
    v_kind integer[];
    v_ctid tid[];
    v_xmin xid[];
    v_entry bigint[];
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
           coalesce(array_agg(t.tenancy_column order by t.table_name::text), '{}'),
           coalesce(array_agg(pyglue._key_match(t.table_name, 'f', 'l') order by t.table_name::text), '{}')
    into v_tables, v_tenancy_columns, v_matches
    from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name;

    -- the candidates, in one statement: kind 0 = tombstones, i = the i-th tracked table,
    -- whose log entries come with the row version they name (none: the row is gone or
    -- no longer flagged, and the entry is only deleted)
    select string_agg(format(
        '(select %s as kind, f.ctid, f.xmin, l.id as entry from pyglue.changed_rows l'
        '  left join lateral (select f.ctid, f.xmin from %s f where %s and f.should_update_sequence_id limit 1) f on true'
        '  where l.table_name = %L::regclass order by l.id limit $1)',
        i, v_tables[i], v_matches[i], v_tables[i]), ' union all ')
    into v_candidates
    from generate_subscripts(v_tables, 1) as i;
    execute 'select coalesce(array_agg(c.kind), ''{}''), coalesce(array_agg(c.ctid), ''{}''),'
            '       coalesce(array_agg(c.xmin), ''{}''), coalesce(array_agg(c.entry), ''{}'') from ('
            '(select 0 as kind, d.ctid, d.xmin, null::bigint as entry from pyglue.deleted_rows d'
            '  where d.should_update_sequence_id order by d.id limit $1)'
            || coalesce(' union all ' || v_candidates, '') || ') c'
    into v_kind, v_ctid, v_xmin, v_entry
    using p_batch_size;

    -- tombstones, in the order they were written
    with candidate as (
        select u.ctid, u.xmin from unnest(v_kind, v_ctid, v_xmin) as u(kind, ctid, xmin) where u.kind = 0
    ), picked as (
        select p.id from candidate c cross join lateral (
            select d.id from pyglue.deleted_rows d
            where d.ctid = c.ctid and d.xmin = c.xmin
            for no key update of d skip locked) p
        order by p.id
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
                '    select p.ctid from unnest($1, $2, $3) as c(kind, ctid, xmin) cross join lateral ('
                '      select f.ctid from %1$s f where f.ctid = c.ctid and f.xmin = c.xmin'
                '      for no key update of f skip locked) p'
                '    where c.kind = $4))'
                '  returning t.%2$I as tenancy_id)'
                ' select count(*), coalesce(array_agg(distinct s.tenancy_id), ''{}'') from stamped s',
                v_tables[v_i], v_tenancy_columns[v_i])
            into v_count, v_tenancies
            using v_kind, v_ctid, v_xmin, v_i;
            v_total := v_total + v_count;
            v_all_tenancies := v_all_tenancies || v_tenancies;
            -- the listed entries whose row is not flagged any more (a new statement: it
            -- sees the stamps above and every commit since the candidates' snapshot)
            execute format(
                'delete from pyglue.changed_rows l'
                ' where l.table_name = $4'
                '   and l.id = any (array(select c.entry from unnest($1, $2) as c(kind, entry) where c.kind = $3))'
                '   and not coalesce((select bool_or(f.should_update_sequence_id) from %s f where %s), false)',
                v_tables[v_i], v_matches[v_i])
            using v_kind, v_entry, v_i, v_tables[v_i];
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
