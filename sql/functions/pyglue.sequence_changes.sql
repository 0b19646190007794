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
