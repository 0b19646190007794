-- Completing or releasing a sync request wakes the workers (NOTIFY pyglue_requests): a
-- request of that tenancy queued meanwhile, or the released one, is claimable from then on,
-- and a worker's loop would otherwise find it only at its next turn (#13). The worker sent
-- the NOTIFY itself after completing before; a completion by anyone else woke nobody.
-- depends: 0023_sequencer_stamps_by_ctid

-- copied from sql/functions/pyglue.complete_request.sql
-- pyglue.complete_request(p_id, p_worker): a claimed request is done; it is removed.
-- With p_worker, only that worker's claim is completed (a worker whose lease expired
-- and was re-claimed by another must not complete it). Returns false when nothing matched.
-- A request of the same tenancy queued meanwhile can be claimed from now on: the workers
-- are woken (NOTIFY pyglue_requests at commit) rather than finding it at their next turn.
create or replace function pyglue.complete_request(p_id bigint, p_worker text default null)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from pyglue.outgoing_requests r
    where r.id = p_id and r.status = 'claimed' and (p_worker is null or r.claimed_by = p_worker);
    if not found then
        return false;
    end if;
    perform pg_notify('pyglue_requests', '');
    return true;
end;
$$;

comment on function pyglue.complete_request(bigint, text) is
    'Finish a claimed sync request (removes it). Returns false if it was not claimed (by p_worker).';

-- copied from sql/functions/pyglue.release_request.sql
-- pyglue.release_request(p_id, p_worker): hand a claimed request back unfinished (a worker
-- shutting down). It becomes pending at once and the claim does not count as an attempt;
-- if the tenancy has a pending request already, the two merge. Returns false when the
-- request is not claimed by p_worker. The workers are woken (NOTIFY pyglue_requests at
-- commit), so another one takes it over at once.
-- Locks: the request row (FOR UPDATE).
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
    perform pg_notify('pyglue_requests', '');
    return true;
end;
$$;

comment on function pyglue.release_request(bigint, text) is
    'Give a claimed sync request back, unfinished and without counting the attempt.';
