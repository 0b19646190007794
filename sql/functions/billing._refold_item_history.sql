-- billing._refold_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id,
-- p_from): recompute the derived points of one item history from p_from on.
--
-- Points before p_from are kept (the fold resumes from the last of them) as long as they
-- are valid (before the history's points_before); from there on they are replaced by
-- billing._item_points up to the history's horizon (billing._item_horizon), which becomes
-- its points_before. So a change in the middle of a history costs what follows it, not the
-- whole history; '-infinity' rebuilds it all.
-- Returns: points written.
-- Locks: the history's row in billing.item_histories (created on first use): every writer
-- of one history (this, billing.change_item_quantity) takes it first, so refolds of one
-- history never interleave, and a check of its balance holds until its transaction ends.
create or replace function billing._refold_item_history(p_tenancy_id uuid, p_customer_type text,
                                                        p_customer_id text, p_item_id text,
                                                        p_from timestamptz)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_from timestamptz;
    v_horizon timestamptz;
    v_points bigint;
begin
    v_from := least(p_from, billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id));
    v_horizon := billing._item_horizon(p_tenancy_id, p_customer_type, p_customer_id, p_item_id);
    delete from billing.item_balances b
    where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
      and b.item_id = p_item_id and b.at >= v_from;
    insert into billing.item_balances (tenancy_id, customer_type, customer_id, item_id, at, balance, debt,
                                       lot_expiries, lot_quantities)
    select p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p.at, p.balance, p.debt, p.lot_expiries,
           p.lot_quantities
    from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_from, v_horizon) p;
    get diagnostics v_points = row_count;
    update billing.item_histories h set points_before = v_horizon, horizon = v_horizon, refolded_at = now()
    where h.tenancy_id = p_tenancy_id and h.customer_type = p_customer_type and h.customer_id = p_customer_id
      and h.item_id = p_item_id;
    return v_points;
end;
$$;

comment on function billing._refold_item_history(uuid, text, text, text, timestamptz) is
    'Recompute the derived points of one item history from p_from on (under the history''s row lock). Returns points written.';
