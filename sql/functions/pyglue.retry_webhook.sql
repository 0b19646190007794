-- pyglue.retry_webhook(p_tenancy_id, p_name): resume a parked (or backing-off) endpoint
-- from its cursor now: the batch that failed is sent again, then everything after it.
-- The last status and response stay as history. Queues the tenancy.
-- Returns false when there is no such webhook.
create or replace function pyglue.retry_webhook(p_tenancy_id uuid, p_name text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    update pyglue.webhooks w
    set parked_at = null, attempts = 0, retry_after = null
    where w.tenancy_id = p_tenancy_id and w.name = p_name;
    if not found then
        return false;
    end if;
    perform pyglue.enqueue_sync(p_tenancy_id);
    return true;
end;
$$;

comment on function pyglue.retry_webhook(uuid, text) is
    'Unpark a webhook endpoint and deliver again from its cursor now (queues the tenancy). Returns false if there is none.';
