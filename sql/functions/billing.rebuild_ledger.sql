-- billing.rebuild_ledger(): refold every item history from nothing, replacing its derived
-- points (also histories whose inputs are all gone: their points are deleted).
-- Returns: histories rebuilt.
-- Locks: each history's row, in key order, until the transaction ends.
create or replace function billing.rebuild_ledger()
returns bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
    with histories as (
        select e.tenancy_id, e.customer_type, e.customer_id, e.item_id from billing.item_events e
        union
        select b.tenancy_id, b.customer_type, b.customer_id, b.item_id from billing.item_balances b
        union
        select h.tenancy_id, h.customer_type, h.customer_id, h.item_id from billing.item_histories h
    )
    select count(billing._refold_item_history(h.tenancy_id, h.customer_type, h.customer_id, h.item_id, '-infinity'))
    from (select * from histories order by 1, 2, 3, 4) h;
$$;

comment on function billing.rebuild_ledger() is
    'Refold every item history from its inputs, replacing the derived points. Returns histories rebuilt.';
