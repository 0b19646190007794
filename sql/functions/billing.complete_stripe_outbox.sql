-- billing.complete_stripe_outbox(p_tenancy_id, p_id, p_metadata): a claimed Stripe metadata
-- write landed.
--
-- p_metadata is what was written. The row is marked delivered only when it still asks for
-- exactly that: a regen that moved the subscription again while the write was in flight
-- replaced the row's metadata, and then the row stays pending and is due at once.
-- Returns: true when marked delivered; false when superseded or already delivered.
-- Errors: P0002 no such outbox row. Locks: the outbox row.
create or replace function billing.complete_stripe_outbox(p_tenancy_id uuid, p_id bigint, p_metadata jsonb)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row billing.stripe_outbox;
begin
    select * into v_row from billing.stripe_outbox o where o.tenancy_id = p_tenancy_id and o.id = p_id for update;
    if not found then
        raise exception 'no Stripe outbox row % in tenancy %', p_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_row.delivered_at is not null then
        return false;
    end if;
    if v_row.metadata is distinct from p_metadata then
        update billing.stripe_outbox o set next_attempt_at = now()
        where o.tenancy_id = p_tenancy_id and o.id = p_id;
        return false;
    end if;
    update billing.stripe_outbox o set delivered_at = now(), last_error = null
    where o.tenancy_id = p_tenancy_id and o.id = p_id;
    return true;
end;
$$;

comment on function billing.complete_stripe_outbox(uuid, bigint, jsonb) is
    'Mark a Stripe metadata write delivered, unless its metadata changed meanwhile (then it is due again). Returns whether it was marked.';
