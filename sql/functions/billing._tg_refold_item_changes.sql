-- billing._tg_refold_item_changes(): statement-level AFTER INSERT / UPDATE / DELETE trigger
-- of billing.item_quantity_changes. Every history the statement touched is refolded from the
-- earliest instant it changed (for an UPDATE: the earlier of the old and new time, and both
-- the old and the new history when the row moved), in the same transaction, so derived
-- state is never stale. Histories are taken in key order, so two statements touching the
-- same histories lock them in the same order.
-- SECURITY DEFINER: a role that may write changes need not be able to write derived state.
create or replace function billing._tg_refold_item_changes()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    -- one statement per operation: a transition table that the trigger does not have
    -- cannot even be named
    if tg_op = 'INSERT' then
        perform billing._refold_item_history(k.tenancy_id, k.customer_type, k.customer_id, k.item_id, k.from_at)
        from (select n.tenancy_id, n.customer_type, n.customer_id, n.item_id, min(n.at) as from_at
              from new_rows n group by 1, 2, 3, 4 order by 1, 2, 3, 4) k;
    elsif tg_op = 'DELETE' then
        -- only histories that still have their row: when a tenancy is deleted its changes go
        -- by cascade, and so do (or did) its histories; nothing is to be refolded then
        perform billing._refold_item_history(k.tenancy_id, k.customer_type, k.customer_id, k.item_id, k.from_at)
        from (select o.tenancy_id, o.customer_type, o.customer_id, o.item_id, min(o.at) as from_at
              from old_rows o
              where exists (select 1 from billing.item_histories h
                            where h.tenancy_id = o.tenancy_id and h.customer_type = o.customer_type
                              and h.customer_id = o.customer_id and h.item_id = o.item_id)
                and exists (select 1 from app.tenancies t where t.id = o.tenancy_id)
              group by 1, 2, 3, 4 order by 1, 2, 3, 4) k;
    else
        perform billing._refold_item_history(k.tenancy_id, k.customer_type, k.customer_id, k.item_id, k.from_at)
        from (select c.tenancy_id, c.customer_type, c.customer_id, c.item_id, min(c.at) as from_at
              from (select n.tenancy_id, n.customer_type, n.customer_id, n.item_id, n.at from new_rows n
                    union all
                    select o.tenancy_id, o.customer_type, o.customer_id, o.item_id, o.at from old_rows o) c
              group by 1, 2, 3, 4 order by 1, 2, 3, 4) k;
    end if;
    return null;
end;
$$;

comment on function billing._tg_refold_item_changes() is
    'Statement trigger of billing.item_quantity_changes: refold each touched item history from its earliest changed instant.';
