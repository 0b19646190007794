-- pyglue.purge_deleted_rows(p_older_than): drop old tombstones so the log stays small.
-- A tombstone goes when it is stamped, was deleted longer than p_older_than ago, and no
-- sync target of its tenancy still needs it: every target whose mapping exports that
-- table has a cursor at or past it (a target that never synced needs no tombstones), and
-- so has every webhook endpoint of the tenancy subscribed to that table (enabled, parked
-- or not: a parked endpoint resumes from its cursor).
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
          where t.tenancy_id = d.tenancy_id and c.last_synced_sequence_id < d.sequence_id)
      and not exists (
          select 1
          from pyglue.webhooks w
          where w.tenancy_id = d.tenancy_id and w.last_delivered_sequence_id < d.sequence_id
            and (w.tables is null or d.table_name = any (w.tables)));
    get diagnostics v_count = row_count;
    return v_count;
end;
$$;

comment on function pyglue.purge_deleted_rows(interval) is
    'Delete stamped tombstones older than the retention period that no sync target or webhook still needs. Returns how many.';
