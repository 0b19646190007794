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
