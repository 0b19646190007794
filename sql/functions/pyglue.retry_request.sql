-- pyglue.retry_request(p_id): give one dead request another chance (the dashboard's retry
-- button). The dead request is removed and its tenancy enqueued afresh (attempts 0, run
-- now), merging with a request of the tenancy already pending; its error is kept in
-- neither (it stays in the target's last_error and the logs).
-- Returns: the id of the tenancy's pending request.
-- Errors: P0002 when no request p_id exists or it is not dead (naming its status).
-- Locks: the request row (FOR UPDATE); then as pyglue.enqueue_sync.
create or replace function pyglue.retry_request(p_id bigint)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_request pyglue.outgoing_requests;
begin
    select * into v_request from pyglue.outgoing_requests r where r.id = p_id for update;
    if not found then
        raise exception 'request % does not exist', p_id using errcode = 'P0002';
    end if;
    if v_request.status <> 'dead' then
        raise exception 'request % is %, not dead', p_id, v_request.status using errcode = 'P0002';
    end if;
    delete from pyglue.outgoing_requests r where r.id = p_id;
    return pyglue.enqueue_sync(v_request.tenancy_id);
end;
$$;

comment on function pyglue.retry_request(bigint) is
    'Requeue one dead sync request (its tenancy is enqueued afresh). Returns the pending request id.';
