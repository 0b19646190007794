-- billing._refold_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id,
-- p_from): recompute the derived points of one item history from p_from on.
--
-- Chunks before p_from are kept (the fold resumes from the last of them) as long as they
-- are valid (before the history's points_before); from there on they are replaced by the
-- chunks of billing._item_points up to the history's horizon (billing._item_horizon),
-- which becomes its points_before. So a change in the middle of a history costs what
-- follows it (rewritten as a few chunks of points), not the whole history; '-infinity'
-- rebuilds it all. Chunks hold up to 64 points (a chunk row stays under the 2 kB at which
-- Postgres moves values out of line), or the setting billing.ledger_chunk_points
-- (tests set it low to cross chunk boundaries often).
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
    v_written timestamptz[];
    v_points bigint;
    v_chunk integer := coalesce(nullif(current_setting('billing.ledger_chunk_points', true), '')::integer, 64);
begin
    v_from := least(p_from, billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id));
    v_horizon := billing._item_horizon(p_tenancy_id, p_customer_type, p_customer_id, p_item_id);
    -- the fold reads the stored chunks it resumes from, so its chunks are upserted (the
    -- first may replace the chunk holding v_from, or the last one continued), then the
    -- chunks from v_from on that it did not write go
    with written as (
        insert into billing.item_balance_chunks as c (tenancy_id, customer_type, customer_id, item_id, first_at,
                                                      last_at, ats, balances, debts, lot_expiries, lot_quantities)
        select p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p.first_at, p.last_at, p.ats, p.balances,
               p.debts, p.lot_expiries, p.lot_quantities
        from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_from, v_horizon, v_chunk) p
        on conflict (tenancy_id, customer_type, customer_id, item_id, first_at) do update
            set last_at = excluded.last_at, ats = excluded.ats, balances = excluded.balances, debts = excluded.debts,
                lot_expiries = excluded.lot_expiries, lot_quantities = excluded.lot_quantities
        returning c.first_at, cardinality(c.ats) as points
    )
    select coalesce(array_agg(w.first_at), '{}'), coalesce(sum(w.points), 0) into v_written, v_points from written w;
    delete from billing.item_balance_chunks c
    where c.tenancy_id = p_tenancy_id and c.customer_type = p_customer_type and c.customer_id = p_customer_id
      and c.item_id = p_item_id and c.first_at >= v_from and c.first_at <> all (v_written);
    update billing.item_histories h set points_before = v_horizon, horizon = v_horizon, refolded_at = now()
    where h.tenancy_id = p_tenancy_id and h.customer_type = p_customer_type and h.customer_id = p_customer_id
      and h.item_id = p_item_id;
    return v_points;
end;
$$;

comment on function billing._refold_item_history(uuid, text, text, text, timestamptz) is
    'Recompute the derived points of one item history from p_from on (under the history''s row lock). Returns points written.';
