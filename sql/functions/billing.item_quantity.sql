-- billing.item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance of one item of a customer at p_at (after everything that happens at p_at).
--
-- One index lookup: the last derived point at or before p_at in billing.item_balances.
-- Every instant at which the balance changes is a point, including expiries (also future
-- ones), so the answer is exact for any time; 0 for a history without points.
create or replace function billing.item_quantity(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_item_id text, p_at timestamptz default now())
returns bigint
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((
        select b.balance from billing.item_balances b
        where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
          and b.item_id = p_item_id and b.at <= p_at
        order by b.at desc
        limit 1), 0);
$$;

comment on function billing.item_quantity(uuid, text, text, text, timestamptz) is
    'Balance of one item of a customer at p_at (default now), exact for any time; 0 when it has no history.';
