-- pyglue.claim_requests(p_worker, p_limit, p_lease): take due requests, oldest first.
--
-- Due: pending with run_after reached, or claimed by a worker whose lease expired or
-- whose database session is gone (a killed worker's claims come back as soon as the server
-- has closed its connections; the lease is the fallback for a worker that hangs while
-- connected). The claiming session is recorded as the holder (pyglue.extend_lease moves
-- it to the session that does the work). Tenancies another worker holds under a
-- live lease are left alone, and one call claims at most one request per tenancy (an
-- expired claim and a newer pending request of one tenancy never run side by side).
-- Concurrent claimers never block each other or take the same request (FOR UPDATE SKIP
-- LOCKED). Each claim counts as an attempt.
-- Locks: the candidate rows (SKIP LOCKED), until the caller commits.
-- Returns: the claimed requests. Errors: 22023 limit below 1 or lease not positive.
create or replace function pyglue.claim_requests(p_worker text, p_limit integer default 1,
                                                 p_lease interval default '5 minutes')
returns setof pyglue.outgoing_requests
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_limit is null or p_limit < 1 then
        raise exception 'claim limit must be at least 1, got %', p_limit using errcode = '22023';
    end if;
    if p_lease is null or p_lease <= '0' then
        raise exception 'lease must be positive, got %', p_lease using errcode = '22023';
    end if;
    return query
    with due as (
        select r.id from pyglue.outgoing_requests r
        where ((r.status = 'pending' and r.run_after <= now())
               or (r.status = 'claimed' and (r.lease_expires_at < now()
                                              or not pyglue._session_alive(r.holder_pid, r.holder_started))))
          and not exists (
              select 1 from pyglue.outgoing_requests o
              where o.tenancy_id = r.tenancy_id and o.id <> r.id
                and o.status = 'claimed' and o.lease_expires_at >= now()
                and pyglue._session_alive(o.holder_pid, o.holder_started))
        order by r.created_at, r.id
        limit p_limit
        for update of r skip locked
    ), one_per_tenancy as (
        select distinct on (o.tenancy_id) o.id
        from pyglue.outgoing_requests o join due on due.id = o.id
        order by o.tenancy_id, o.created_at, o.id
    ), claimed as (
        update pyglue.outgoing_requests r
        set status = 'claimed', claimed_by = p_worker, claimed_at = now(),
            lease_expires_at = now() + p_lease, attempts = r.attempts + 1,
            holder_pid = pg_backend_pid(),
            holder_started = (select a.backend_start from pg_stat_get_activity(pg_backend_pid()) a)
        from one_per_tenancy c where r.id = c.id
        returning r.*
    )
    select * from claimed order by created_at, id;
end;
$$;

comment on function pyglue.claim_requests(text, integer, interval) is
    'Claim up to p_limit due sync requests, oldest first, under a lease that expires (SKIP LOCKED).';
