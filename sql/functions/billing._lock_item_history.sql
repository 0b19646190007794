-- billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id): take
-- the row lock of one item history, creating its row in billing.item_histories on first use
-- (with no valid points). Held until the transaction ends; writers of one history queue on it.
-- Returns: the history's points_before (its stored points are valid before it).
-- Errors: 23503 unknown tenancy; 23514 bad customer type or empty id.
create or replace function billing._lock_item_history(p_tenancy_id uuid, p_customer_type text,
                                                      p_customer_id text, p_item_id text)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_points_before timestamptz;
begin
    -- PL/pgSQL for its cached plan (called at every refold)
    insert into billing.item_histories as h (tenancy_id, customer_type, customer_id, item_id)
    values (p_tenancy_id, p_customer_type, p_customer_id, p_item_id)
    on conflict (tenancy_id, customer_type, customer_id, item_id) do update set points_before = h.points_before
    returning h.points_before into v_points_before;
    return v_points_before;
end;
$$;

comment on function billing._lock_item_history(uuid, text, text, text) is
    'Row-lock one item history (creating its billing.item_histories row on first use) until the transaction ends; returns its points_before.';
