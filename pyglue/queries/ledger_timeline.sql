-- One item history up to %(at)s, an instant per row: the changes at that instant (delta,
-- expiry, source) and the state after it. Folded from nothing, so it shows what the ledger
-- holds whether or not its points are stored (one point per chunk); expiry-only instants have no changes. A
-- null expires_at is never.
with bounds as (
    select %(tenancy_id)s::uuid as tenancy_id, %(customer_type)s::text as customer_type,
           %(customer_id)s::text as customer_id, %(item_id)s::text as item_id,
           %(at)s::timestamptz + interval '1 microsecond' as before
), changes as (
    select e.at, jsonb_agg(jsonb_build_object('delta', e.delta,
                                              'expires_at', case when isfinite(e.expires_at) then e.expires_at end,
                                              'source', e.source_kind || ' ' || e.source_id)
                           order by e.delta desc, e.expires_at) as changes
    from bounds b, billing._item_events(b.tenancy_id, b.customer_type, b.customer_id, b.item_id, '-infinity', b.before) e
    group by e.at
)
select p.first_at as at, coalesce(c.changes, '[]') as changes, p.balances[1] as balance, p.debts[1] as debt,
       coalesce((select jsonb_agg(jsonb_build_object('expires_at', case when isfinite(x.e) then x.e end,
                                                     'quantity', x.q) order by x.n)
                 from unnest(p.lot_expiries, p.lot_quantities) with ordinality as x(e, q, n)), '[]') as lots
from bounds b
cross join lateral billing._item_points(b.tenancy_id, b.customer_type, b.customer_id, b.item_id, '-infinity', b.before, 1) p
left join changes c on c.at = p.first_at
order by p.first_at
