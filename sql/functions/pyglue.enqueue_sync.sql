-- pyglue.enqueue_sync(p_tenancy_id, p_delay): ask for a sync of one tenancy.
--
-- At most one pending request per tenancy (partial unique index): a second call returns
-- the pending one. A request already claimed by a worker does not count, so a change
-- made while a sync runs is queued behind it. A pending request that is only scheduled
-- (never failed) is pulled forward to the earlier time; one backing off after failures
-- keeps its delay. The insert NOTIFYs pyglue_requests (trigger on the table).
-- Returns: the id of the tenancy's pending request.
-- Locks: waits on another transaction inserting a pending request of the same tenancy
-- (unique index) until it ends.
create or replace function pyglue.enqueue_sync(p_tenancy_id uuid, p_delay interval default '0')
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    insert into pyglue.outgoing_requests as r (tenancy_id, run_after)
    values (p_tenancy_id, now() + greatest(coalesce(p_delay, '0'), '0'))
    on conflict (tenancy_id) where status = 'pending' do update
        set run_after = least(r.run_after, excluded.run_after)
        where r.attempts = 0
    returning r.id into v_id;
    if v_id is null then
        select r.id into v_id from pyglue.outgoing_requests r
        where r.tenancy_id = p_tenancy_id and r.status = 'pending';
    end if;
    return v_id;
end;
$$;

comment on function pyglue.enqueue_sync(uuid, interval) is
    'Queue a sync of a tenancy (deduplicated: one pending request per tenancy). Returns the request id.';
