-- billing.rebuild_ledger(): refold every item history that has derived state from nothing,
-- replacing its points (a history whose inputs are all gone loses its points).
-- Returns: histories rebuilt.
-- Locks: each history's row, in key order, until the transaction ends.
create or replace function billing.rebuild_ledger()
returns bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
    select count(billing._refold_item_history(h.tenancy_id, h.customer_type, h.customer_id, h.item_id, '-infinity'))
    from (select h.tenancy_id, h.customer_type, h.customer_id, h.item_id from billing.item_histories h
          order by 1, 2, 3, 4) h;
$$;

comment on function billing.rebuild_ledger() is
    'Refold every item history from its inputs, replacing the derived points. Returns histories rebuilt.';
