-- billing.verify_ledger(): the differences between the stored points of every item history
-- (billing.item_balances, those before the history's points_before) and a fold of its
-- inputs from nothing (billing._item_points from '-infinity' to points_before). Empty when
-- derived state is right.
-- Returns: one row per differing point: the history, the instant, and the expected and
-- stored balance and debt (null on the side that has no point there); lots differing at
-- an instant where balance and debt agree are reported too.
create or replace function billing.verify_ledger()
returns table (tenancy_id uuid, customer_type text, customer_id text, item_id text, at timestamptz,
               expected_balance bigint, stored_balance bigint, expected_debt bigint, stored_debt bigint)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    with expected as (
        select h.tenancy_id, h.customer_type, h.customer_id, h.item_id, p.*
        from billing.item_histories h
        cross join lateral billing._item_points(h.tenancy_id, h.customer_type, h.customer_id, h.item_id,
                                                '-infinity', h.points_before) p
    ), stored as (
        select b.* from billing.item_balances b
        join billing.item_histories h
          on h.tenancy_id = b.tenancy_id and h.customer_type = b.customer_type and h.customer_id = b.customer_id
         and h.item_id = b.item_id
        where b.at < h.points_before
    )
    select coalesce(x.tenancy_id, s.tenancy_id), coalesce(x.customer_type, s.customer_type),
           coalesce(x.customer_id, s.customer_id), coalesce(x.item_id, s.item_id), coalesce(x.at, s.at),
           x.balance, s.balance, x.debt, s.debt
    from expected x
    full join stored s
      on s.tenancy_id = x.tenancy_id and s.customer_type = x.customer_type and s.customer_id = x.customer_id
     and s.item_id = x.item_id and s.at = x.at
    where (x.balance, x.debt, x.lot_expiries, x.lot_quantities)
          is distinct from (s.balance, s.debt, s.lot_expiries, s.lot_quantities)
    order by 1, 2, 3, 4, 5;
$$;

comment on function billing.verify_ledger() is
    'Differences between the stored item balances and a fold of the ledger inputs from nothing; empty when derived state is right.';
