-- billing.verify_ledger(): the differences between the stored points of every item history
-- (the chunks of billing.item_balance_chunks, points before the history's points_before)
-- and a fold of its inputs from nothing (billing._item_points from '-infinity' to
-- points_before, one point per chunk). Empty when derived state is right.
-- Returns: one row per differing point: the history, the instant, and the expected and
-- stored balance and debt (null on the side that has no point there); a point stored
-- twice, and lots differing at the end of a stored chunk where balance and debt agree,
-- are reported too.
create or replace function billing.verify_ledger()
returns table (tenancy_id uuid, customer_type text, customer_id text, item_id text, at timestamptz,
               expected_balance bigint, stored_balance bigint, expected_debt bigint, stored_debt bigint)
language sql
stable
set search_path = pg_catalog, pg_temp
-- the planner sizes each fold at 1,000 rows, so a server with JIT (Debian's packages:
-- jit = on) compiled even a small ledger's check: 25-220 ms a call for under 1 ms of work
set jit = off
as $$
    with expected as (
        select h.tenancy_id, h.customer_type, h.customer_id, h.item_id, p.first_at as at, p.balances[1] as balance,
               p.debts[1] as debt, p.lot_expiries, p.lot_quantities
        from billing.item_histories h
        cross join lateral billing._item_points(h.tenancy_id, h.customer_type, h.customer_id, h.item_id,
                                                '-infinity', h.points_before, 1) p
    ), stored as (
        select c.tenancy_id, c.customer_type, c.customer_id, c.item_id, x.at, x.balance, x.debt,
               x.at = c.last_at as chunk_end, c.lot_expiries, c.lot_quantities,
               count(*) over (partition by c.tenancy_id, c.customer_type, c.customer_id, c.item_id, x.at) as copies
        from billing.item_balance_chunks c
        join billing.item_histories h
          on h.tenancy_id = c.tenancy_id and h.customer_type = c.customer_type and h.customer_id = c.customer_id
         and h.item_id = c.item_id
        cross join lateral unnest(c.ats, c.balances, c.debts) x (at, balance, debt)
        where x.at < h.points_before
    )
    select coalesce(x.tenancy_id, s.tenancy_id), coalesce(x.customer_type, s.customer_type),
           coalesce(x.customer_id, s.customer_id), coalesce(x.item_id, s.item_id), coalesce(x.at, s.at),
           x.balance, s.balance, x.debt, s.debt
    from expected x
    full join stored s
      on s.tenancy_id = x.tenancy_id and s.customer_type = x.customer_type and s.customer_id = x.customer_id
     and s.item_id = x.item_id and s.at = x.at
    where (x.balance, x.debt) is distinct from (s.balance, s.debt)
       or s.copies > 1
       or (s.chunk_end and (x.lot_expiries, x.lot_quantities) is distinct from (s.lot_expiries, s.lot_quantities))
    order by 1, 2, 3, 4, 5;
$$;

comment on function billing.verify_ledger() is
    'Differences between the stored item balances and a fold of the ledger inputs from nothing; empty when derived state is right.';
