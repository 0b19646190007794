-- pyglue.remove_sync_target(p_tenancy_id, p_name): forget a sync target (its data in the
-- external database stays). Returns false when there was no such target.
create or replace function pyglue.remove_sync_target(p_tenancy_id uuid, p_name text)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with gone as (
        delete from pyglue.sync_targets t where t.tenancy_id = p_tenancy_id and t.name = p_name returning 1
    )
    select exists (select 1 from gone);
$$;

comment on function pyglue.remove_sync_target(uuid, text) is
    'Remove a sync target of a tenancy (the external data stays). Returns false if it did not exist.';
