-- pyglue.fail_request(p_id, p_error, ...): a claimed request failed.
--
-- Below p_max_attempts it goes back to pending after a capped exponential backoff:
-- least(p_max_delay, p_base_delay * 2^(attempts - 1)). If a new pending request of the
-- tenancy was queued meanwhile, the two merge (the later run time and the higher attempt
-- count win). At p_max_attempts it becomes dead, keeping its last error; dead requests
-- are never dropped silently (see pyglue.sync_status and requeue_dead_requests).
-- With p_worker, only that worker's claim can fail (a worker whose lease expired must
-- not reset the claim of the worker that took over).
-- Returns: the request's new status, 'pending' or 'dead'.
-- Errors: P0002 the request does not exist or is not claimed (by p_worker).
-- Locks: the request row (FOR UPDATE).
create or replace function pyglue.fail_request(p_id bigint, p_error text,
                                               p_max_attempts integer default 8,
                                               p_base_delay interval default '1 second',
                                               p_max_delay interval default '10 minutes',
                                               p_worker text default null)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_request pyglue.outgoing_requests;
    v_run_after timestamptz;
begin
    select * into v_request from pyglue.outgoing_requests r
    where r.id = p_id and r.status = 'claimed' and (p_worker is null or r.claimed_by = p_worker)
    for update;
    if not found then
        raise exception 'sync request % does not exist or is not claimed%', p_id,
            case when p_worker is null then '' else ' by ' || p_worker end using errcode = 'P0002';
    end if;

    if v_request.attempts >= p_max_attempts then
        update pyglue.outgoing_requests
        set status = 'dead', dead_at = now(), last_error = p_error, lease_expires_at = null
        where id = p_id;
        return 'dead';
    end if;

    v_run_after := now() + least(p_max_delay, p_base_delay * power(2, least(greatest(v_request.attempts - 1, 0), 30)));
    begin
        update pyglue.outgoing_requests
        set status = 'pending', run_after = v_run_after, last_error = p_error,
            claimed_by = null, claimed_at = null, lease_expires_at = null
        where id = p_id;
    exception when unique_violation then
        -- a change queued a new pending request while this one ran: keep that one
        update pyglue.outgoing_requests r
        set attempts = greatest(r.attempts, v_request.attempts), last_error = p_error,
            run_after = greatest(r.run_after, v_run_after)
        where r.tenancy_id = v_request.tenancy_id and r.status = 'pending';
        delete from pyglue.outgoing_requests where id = p_id;
    end;
    return 'pending';
end;
$$;

comment on function pyglue.fail_request(bigint, text, integer, interval, interval, text) is
    'Record a failed sync request: retry with capped exponential backoff, dead after p_max_attempts (error kept).';
