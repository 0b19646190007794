-- pyglue.set_sync_target_enabled(p_tenancy_id, p_name, p_enabled): pause or resume one
-- target. Enabling clears its backoff and queues a sync. Returns false when no such target.
create or replace function pyglue.set_sync_target_enabled(p_tenancy_id uuid, p_name text, p_enabled boolean)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    update pyglue.sync_targets t
    set enabled = p_enabled,
        retry_after = case when p_enabled then null else t.retry_after end,
        consecutive_failures = case when p_enabled then 0 else t.consecutive_failures end
    where t.tenancy_id = p_tenancy_id and t.name = p_name;
    if not found then
        return false;
    end if;
    if p_enabled then
        perform pyglue.enqueue_sync(p_tenancy_id);
    end if;
    return true;
end;
$$;

comment on function pyglue.set_sync_target_enabled(uuid, text, boolean) is
    'Enable or disable a sync target; enabling clears its backoff and queues a sync.';
