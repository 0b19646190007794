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
