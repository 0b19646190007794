-- pyglue.requeue_dead_requests(p_tenancy_id): give dead requests another chance after
-- the cause was fixed. Each dead request of the tenancy (all tenancies when null) is
-- removed and its tenancy enqueued afresh (attempts 0). Returns how many were requeued.
create or replace function pyglue.requeue_dead_requests(p_tenancy_id uuid default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy uuid;
    v_count bigint := 0;
begin
    for v_tenancy in
        delete from pyglue.outgoing_requests r
        where r.status = 'dead' and (p_tenancy_id is null or r.tenancy_id = p_tenancy_id)
        returning r.tenancy_id
    loop
        perform pyglue.enqueue_sync(v_tenancy);
        v_count := v_count + 1;
    end loop;
    return v_count;
end;
$$;

comment on function pyglue.requeue_dead_requests(uuid) is
    'Requeue dead sync requests (of one tenancy, or all) with fresh attempts. Returns how many.';
