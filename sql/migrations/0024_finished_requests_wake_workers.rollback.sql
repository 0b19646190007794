-- Rollback of 0024: completing and releasing a request wake no worker (as of 0004 and 0007).

-- restored from 0004 (sql/functions/pyglue.complete_request.sql as it was there)
-- pyglue.complete_request(p_id, p_worker): a claimed request is done; it is removed.
-- With p_worker, only that worker's claim is completed (a worker whose lease expired
-- and was re-claimed by another must not complete it). Returns false when nothing matched.
create or replace function pyglue.complete_request(p_id bigint, p_worker text default null)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with done as (
        delete from pyglue.outgoing_requests r
        where r.id = p_id and r.status = 'claimed' and (p_worker is null or r.claimed_by = p_worker)
        returning 1
    )
    select exists (select 1 from done);
$$;

comment on function pyglue.complete_request(bigint, text) is
    'Finish a claimed sync request (removes it). Returns false if it was not claimed (by p_worker).';

-- restored from 0007 (sql/functions/pyglue.release_request.sql as it was there)
-- pyglue.release_request(p_id, p_worker): hand a claimed request back unfinished (a worker
-- shutting down). It becomes pending at once and the claim does not count as an attempt;
-- if the tenancy has a pending request already, the two merge. Returns false when the
-- request is not claimed by p_worker.
create or replace function pyglue.release_request(p_id bigint, p_worker text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy uuid;
begin
    select r.tenancy_id into v_tenancy from pyglue.outgoing_requests r
    where r.id = p_id and r.status = 'claimed' and r.claimed_by = p_worker
    for update;
    if not found then
        return false;
    end if;
    begin
        update pyglue.outgoing_requests
        set status = 'pending', run_after = now(), attempts = greatest(attempts - 1, 0),
            claimed_by = null, claimed_at = null, lease_expires_at = null
        where id = p_id;
    exception when unique_violation then
        delete from pyglue.outgoing_requests where id = p_id;
    end;
    return true;
end;
$$;

comment on function pyglue.release_request(bigint, text) is
    'Give a claimed sync request back, unfinished and without counting the attempt.';
