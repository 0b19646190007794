-- pyglue.sync_status(p_tenancy_id): how far each target of a tenancy (or of all
-- tenancies) is, per mapping it syncs (every registered mapping for a target that has not
-- synced yet; a mapping used once with --mappings-dir does not stay in everyone's status).
--
-- pending_rows counts rows, not id differences: rows of the mapping's source table and
-- its tombstones that are past the target's cursor or not yet sequenced (an index scan on
-- (tenancy, sequence_id), and the flagged rows' entries in pyglue.changed_rows). Queue columns describe the
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
-- a status poll gains nothing from JIT, and a server with it on (Debian's packages)
-- compiled its queries whenever the estimates crossed jit_above_cost: 6-30 ms a call
set jit = off
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
        execute format('select count(*) from %s where %I = $1 and sequence_id > $2',
                       v_row.source_table, v_row.tenancy_column)
        into v_live using v_row.tenancy_id, v_row.cursor;
        v_live := v_live + pyglue._unsequenced_rows(v_row.source_table::regclass, v_row.tenancy_id, v_row.cursor);
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
