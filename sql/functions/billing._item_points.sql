-- billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_from,
-- p_before): the fold of one item history over [p_from, p_before): one row per instant at
-- which something happens (a change, or the expiry of a lot), with the state after it.
--
-- The fold (../shared/DESIGN.md "Item ledger"), in time order; at one instant:
--   1. grants, soonest expiry first (never-expiring last): each pays off debt first, what
--      is left becomes a lot with its expiry; a grant expiring at or before its own time is
--      never granted;
--   2. removals, summed: taken from live lots soonest expiry first, never-expiring last;
--      what cannot be covered becomes debt (a negative balance);
--   3. expiries: a lot expiring at this instant loses what is left of it (so it can still
--      be used at that instant).
-- Lots with the same expiry behave alike in every step, so the state keeps one lot per
-- expiry: lot_expiries ascending ('infinity' = never) with lot_quantities beside them, and
-- debt. Debt and lots never coexist (a removal empties every lot before it makes debt, a
-- grant pays debt before it makes a lot). balance = sum(lot_quantities) - debt.
-- The fold starts from the stored state of the last point before p_from in
-- billing.item_balances ('-infinity': from nothing, as billing.verify_ledger does).
-- Inputs: billing._item_events (manual changes, purchase grants and adjustments).
-- Returns: (at, balance, debt, lot_expiries, lot_quantities) per instant, ascending.
create or replace function billing._item_points(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                p_item_id text, p_from timestamptz, p_before timestamptz)
returns table (at timestamptz, balance bigint, debt bigint, lot_expiries timestamptz[], lot_quantities bigint[])
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_exp timestamptz[];
    v_qty bigint[];
    v_debt bigint;
    v_total bigint;  -- sum of v_qty
    v_instant record;
    v_i integer;
    v_j integer;
    v_left bigint;
    v_take bigint;
begin
    select b.debt, b.lot_expiries, b.lot_quantities into v_debt, v_exp, v_qty
    from billing.item_balances b
    where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
      and b.item_id = p_item_id and b.at < p_from
    order by b.at desc
    limit 1;
    if not found then
        v_debt := 0;
        v_exp := '{}';
        v_qty := '{}';
    end if;
    v_total := coalesce((select sum(q) from unnest(v_qty) q), 0);

    for v_instant in
        select e.at,
               coalesce(sum(-e.delta) filter (where e.delta < 0), 0) as removed,
               array_agg(e.delta order by e.expires_at) filter (where e.delta > 0 and e.expires_at > e.at) as grant_qty,
               array_agg(e.expires_at order by e.expires_at) filter (where e.delta > 0 and e.expires_at > e.at) as grant_exp
        from billing._item_events(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_from, p_before) e
        group by e.at
        order by e.at
    loop
        -- 0. lots that expire before this instant, each its own point
        while cardinality(v_exp) > 0 and v_exp[1] < v_instant.at loop
            at := v_exp[1];
            v_total := v_total - v_qty[1];
            v_exp := v_exp[2:];
            v_qty := v_qty[2:];
            balance := v_total - v_debt; debt := v_debt; lot_expiries := v_exp; lot_quantities := v_qty;
            return next;
        end loop;
        -- 1. grants
        for v_i in 1 .. coalesce(cardinality(v_instant.grant_qty), 0) loop
            v_left := v_instant.grant_qty[v_i];
            v_take := least(v_debt, v_left);
            v_debt := v_debt - v_take;
            v_left := v_left - v_take;
            continue when v_left = 0;
            v_total := v_total + v_left;
            v_j := 1;
            while v_j <= cardinality(v_exp) and v_exp[v_j] < v_instant.grant_exp[v_i] loop
                v_j := v_j + 1;
            end loop;
            if v_j <= cardinality(v_exp) and v_exp[v_j] = v_instant.grant_exp[v_i] then
                v_qty[v_j] := v_qty[v_j] + v_left;
            else
                v_exp := v_exp[:v_j - 1] || v_instant.grant_exp[v_i] || v_exp[v_j:];
                v_qty := v_qty[:v_j - 1] || v_left || v_qty[v_j:];
            end if;
        end loop;
        -- 2. removals
        v_left := v_instant.removed;
        v_j := 1;
        while v_left > 0 and v_j <= cardinality(v_exp) loop
            v_take := least(v_left, v_qty[v_j]);
            v_qty[v_j] := v_qty[v_j] - v_take;
            v_left := v_left - v_take;
            v_j := v_j + 1;
        end loop;
        v_total := v_total - (v_instant.removed - v_left);
        v_debt := v_debt + v_left;
        -- 3. expiries at this instant, and lots used up: both are a prefix of the lots
        -- (lots are sorted by expiry, and removals empty them in that order)
        v_i := 1;
        while v_i <= cardinality(v_exp) and (v_exp[v_i] <= v_instant.at or v_qty[v_i] = 0) loop
            v_total := v_total - v_qty[v_i];
            v_i := v_i + 1;
        end loop;
        if v_i > 1 then
            v_exp := v_exp[v_i:];
            v_qty := v_qty[v_i:];
        end if;
        at := v_instant.at; balance := v_total - v_debt; debt := v_debt; lot_expiries := v_exp; lot_quantities := v_qty;
        return next;
    end loop;

    -- expiries after the last change
    while cardinality(v_exp) > 0 and v_exp[1] < p_before loop
        at := v_exp[1];
        v_total := v_total - v_qty[1];
        v_exp := v_exp[2:];
        v_qty := v_qty[2:];
        balance := v_total - v_debt; debt := v_debt; lot_expiries := v_exp; lot_quantities := v_qty;
        return next;
    end loop;
end;
$$;

comment on function billing._item_points(uuid, text, text, text, timestamptz, timestamptz) is
    'The FEFO fold of one item history over [p_from, p_before) (state before it from billing.item_balances): one row per instant with the balance, debt and lots after it.';
