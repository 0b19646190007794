-- pyglue.extend_lease(p_id, p_worker, p_lease): a worker still busy with a request renews
-- its lease, so a long sync is not handed to another worker, and makes the calling
-- session the claim's holder: when that session ends (the worker was killed), the claim
-- is free at once (pyglue.claim_requests). Returns false when the request is no longer
-- claimed by p_worker (its lease expired or its holder died, and someone took it).
create or replace function pyglue.extend_lease(p_id bigint, p_worker text, p_lease interval default '5 minutes')
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
    with renewed as (
        update pyglue.outgoing_requests r
        set lease_expires_at = now() + p_lease, holder_pid = pg_backend_pid(),
            holder_started = (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a)
        where r.id = p_id and r.status = 'claimed' and r.claimed_by = p_worker
        returning 1
    )
    select exists (select 1 from renewed);
$$;

comment on function pyglue.extend_lease(bigint, text, interval) is
    'Renew the lease of a claimed sync request. Returns false if the worker no longer holds it.';
