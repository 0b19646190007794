-- Rollback of 0020: webhooks, their delivery log and functions go; tables that had the
-- first-stamp column lose it; purge_deleted_rows gets back its 0007 definition (copied below).
drop trigger if exists _500_first_stamp on pyglue.tracked_tables;
drop function if exists pyglue.tg_tracked_tables__first_stamp();
select pyglue._untrack_first_stamp(t.table_name) from pyglue.tracked_tables t;
drop function if exists pyglue.webhook_status(uuid);
drop function if exists pyglue.record_webhook_delivery(bigint, bigint, bigint, integer, integer, text, text, integer,
                                                       double precision, integer, double precision, double precision);
drop function if exists pyglue.retry_webhook(uuid, text);
drop function if exists pyglue.set_webhook_enabled(uuid, text, boolean);
drop function if exists pyglue.remove_webhook(uuid, text);
drop function if exists pyglue.add_webhook(uuid, text, text, text[], text, boolean, text[]);
drop function if exists pyglue._untrack_first_stamp(regclass);
drop function if exists pyglue._track_first_stamp(regclass);
drop function if exists pyglue._tg_first_stamp();
drop table if exists pyglue.webhook_deliveries;
drop table if exists pyglue.webhooks;

-- copied from sql/functions/pyglue.purge_deleted_rows.sql as of 0007_sync_functions
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
