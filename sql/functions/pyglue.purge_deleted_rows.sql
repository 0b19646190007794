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
