-- billing.item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance of one item of a customer at p_at (after everything that happens at p_at).
--
-- Exact for any time: every instant at which the balance changes is a stored point (future
-- expiries and repeats included) up to the history's horizon, read by one index lookup;
-- later times are folded on the fly, so due repeats count even if no job has run (see
-- billing._item_state_at).
-- Returns: the balance; 0 for a customer without history of the item.
-- Errors: 22023 an infinite p_at.
create or replace function billing.item_quantity(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_item_id text, p_at timestamptz default now())
returns bigint
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select s.balance from billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at) s;
$$;

comment on function billing.item_quantity(uuid, text, text, text, timestamptz) is
    'Balance of one item of a customer at p_at (default now), exact for any time; 0 when it has no history.';
