-- pyglue.remove_webhook(p_tenancy_id, p_name): forget a webhook endpoint and its delivery
-- log. Returns false when the tenancy has no webhook of that name.
create or replace function pyglue.remove_webhook(p_tenancy_id uuid, p_name text)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with gone as (
        delete from pyglue.webhooks w where w.tenancy_id = p_tenancy_id and w.name = p_name returning 1
    )
    select exists (select 1 from gone);
$$;

comment on function pyglue.remove_webhook(uuid, text) is
    'Remove a webhook endpoint of a tenancy (and its delivery log). Returns false if there was none.';
