-- billing.change_item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id,
-- p_delta, p_expires_at, p_allow_negative, p_at): a manual change of a customer's item
-- quantity at p_at: a grant (p_delta > 0, expiring at p_expires_at or never) or a removal
-- (p_delta < 0, no expiry).
--
-- Unless p_allow_negative, a removal must be covered by what is there at p_at (lots
-- expiring at p_at included: removals at an instant come before its expiries): the change
-- is written, the history refolded (the trigger of billing.item_quantity_changes), and if
-- that made new debt at p_at the call fails and nothing stays written. The check and the
-- write are atomic: both happen under the history's row lock, so two concurrent removals
-- that together exceed the balance cannot both pass (the second waits, then sees the
-- first). p_at may be in the past or the future.
-- Returns: the id of the change.
-- Errors: 22004 null argument; 22023 zero delta, or a removal with an expiry; 23514 bad
-- customer type or empty id; 23503 unknown tenancy; P0001 (insufficient_quantity) a
-- removal the balance does not cover, naming what is available. Nothing is written on error.
-- Locks: the history's row in billing.item_histories.
create or replace function billing.change_item_quantity(p_tenancy_id uuid, p_customer_type text,
                                                        p_customer_id text, p_item_id text, p_delta bigint,
                                                        p_expires_at timestamptz default null,
                                                        p_allow_negative boolean default false,
                                                        p_at timestamptz default now())
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_debt_before bigint;
    v_debt_after bigint;
    v_id bigint;
begin
    if p_tenancy_id is null or p_customer_type is null or p_customer_id is null or p_item_id is null
       or p_delta is null or p_allow_negative is null or p_at is null then
        raise exception 'tenancy, customer, item, delta, allow-negative and time must not be null'
            using errcode = '22004';
    end if;
    if p_delta = 0 then
        raise exception 'delta of item % must not be 0', p_item_id using errcode = '22023';
    end if;
    if p_delta < 0 and p_expires_at is not null then
        raise exception 'a removal (delta %) of item % cannot expire (expires_at %)', p_delta, p_item_id, p_expires_at
            using errcode = '22023';
    end if;
    perform billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id);
    if p_delta < 0 and not p_allow_negative then
        select s.debt into v_debt_before
        from billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at) s;
    end if;
    insert into billing.item_quantity_changes (tenancy_id, customer_type, customer_id, item_id, delta, expires_at, at)
    values (p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_delta, p_expires_at, p_at)
    returning id into v_id;
    if p_delta < 0 and not p_allow_negative then
        -- covered unless the fold (the trigger has refolded) made new debt at p_at: removals
        -- at an instant come after its grants and before its expiries
        select s.debt into v_debt_after
        from billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at) s;
        if v_debt_after > v_debt_before then
            raise exception 'insufficient quantity of item % for %:%: % available at %, change %', p_item_id,
                p_customer_type, p_customer_id, -p_delta - (v_debt_after - v_debt_before), p_at, p_delta
                using errcode = 'P0001', hint = 'pass p_allow_negative => true to allow a negative balance';
        end if;
    end if;
    return v_id;
end;
$$;

comment on function billing.change_item_quantity(uuid, text, text, text, bigint, timestamptz, boolean, timestamptz) is
    'Grant (positive delta, optional expiry) or remove (negative) items of a customer at p_at; a removal the balance does not cover fails unless p_allow_negative. Returns the change id.';
