-- pyglue.set_webhook_enabled(p_tenancy_id, p_name, p_enabled): pause or resume deliveries
-- to an endpoint. A disabled endpoint keeps its cursor: changes wait, nothing is lost.
-- Enabling clears a backoff (not a parked state: that is pyglue.retry_webhook) and queues
-- the tenancy. Returns false when there is no such webhook.
create or replace function pyglue.set_webhook_enabled(p_tenancy_id uuid, p_name text, p_enabled boolean)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_enabled is null then
        raise exception 'enabled must be true or false, not null' using errcode = '22004';
    end if;
    update pyglue.webhooks w
    set enabled = p_enabled,
        retry_after = case when p_enabled then null else w.retry_after end
    where w.tenancy_id = p_tenancy_id and w.name = p_name;
    if not found then
        return false;
    end if;
    if p_enabled then
        perform pyglue.enqueue_sync(p_tenancy_id);
    end if;
    return true;
end;
$$;

comment on function pyglue.set_webhook_enabled(uuid, text, boolean) is
    'Enable (clearing its backoff, queueing the tenancy) or disable a webhook endpoint. Returns false if there is none.';
