-- billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_from,
-- p_before, p_chunk): the fold of one item history from p_from to p_before, as chunks of
-- the points it yields (a point: an instant at which something happens, a change or the
-- expiry of a lot, with the balance and debt after it), at most p_chunk points per chunk.
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
--
-- Resumes from the chunks stored in billing.item_balance_chunks before p_from (from
-- '-infinity': from nothing, as billing.verify_ledger does): from the end state of the last
-- chunk before p_from. A chunk holding p_from is folded again from its first point, and a
-- last chunk with room left is continued (its points come first in the first chunk), so
-- the first chunk returned may start before p_from: a caller that stores the result
-- replaces the stored chunks from that chunk's first_at on (billing._refold_item_history).
-- Inputs: billing._item_events (manual changes, purchase grants and adjustments).
-- Returns: (first_at, last_at, ats, balances, debts, lot_expiries, lot_quantities) per
-- chunk, ascending; the lots are the state after the chunk's last point (so with p_chunk
-- = 1, after every point).
create or replace function billing._item_points(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                p_item_id text, p_from timestamptz, p_before timestamptz,
                                                p_chunk integer default 64)
returns table (first_at timestamptz, last_at timestamptz, ats timestamptz[], balances bigint[], debts bigint[],
               lot_expiries timestamptz[], lot_quantities bigint[])
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_from timestamptz := p_from;
    v_prev billing.item_balance_chunks;
    v_exp timestamptz[];
    v_qty bigint[];
    v_debt bigint;
    v_total bigint;  -- sum of v_qty
    v_n integer := 0;  -- points in the chunk being built (ats, balances, debts)
    v_instant record;
    v_i integer;
    v_j integer;
    v_left bigint;
    v_take bigint;
begin
    select c.* into v_prev from billing.item_balance_chunks c
    where c.tenancy_id = p_tenancy_id and c.customer_type = p_customer_type and c.customer_id = p_customer_id
      and c.item_id = p_item_id and c.first_at < p_from
    order by c.first_at desc
    limit 1;
    if found and v_prev.last_at >= p_from then
        -- p_from falls inside this chunk: fold it again from its first point
        v_from := v_prev.first_at;
        select c.* into v_prev from billing.item_balance_chunks c
        where c.tenancy_id = p_tenancy_id and c.customer_type = p_customer_type and c.customer_id = p_customer_id
          and c.item_id = p_item_id and c.first_at < v_from
        order by c.first_at desc
        limit 1;
    elsif found and cardinality(v_prev.ats) < p_chunk then
        -- continue the last chunk: its points come first
        v_n := cardinality(v_prev.ats);
        first_at := v_prev.first_at;
        ats := v_prev.ats;
        balances := v_prev.balances;
        debts := v_prev.debts;
    end if;
    if v_prev.first_at is null then
        v_debt := 0;
        v_exp := '{}';
        v_qty := '{}';
    else
        v_debt := v_prev.debts[cardinality(v_prev.debts)];
        v_exp := v_prev.lot_expiries;
        v_qty := v_prev.lot_quantities;
    end if;
    v_total := coalesce((select sum(q) from unnest(v_qty) q), 0);

    -- every point is appended to the chunk being built (a final instant of 'infinity' only
    -- flushes the lots that expire before p_before)
    for v_instant in
        select e.at,
               coalesce(sum(-e.delta) filter (where e.delta < 0), 0) as removed,
               array_agg(e.delta order by e.expires_at) filter (where e.delta > 0 and e.expires_at > e.at) as grant_qty,
               array_agg(e.expires_at order by e.expires_at) filter (where e.delta > 0 and e.expires_at > e.at) as grant_exp
        from billing._item_events(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_from, p_before) e
        group by e.at
        union all
        select 'infinity'::timestamptz, 0::numeric, null::bigint[], null::timestamptz[]
        order by 1
    loop
        -- 0. lots that expire before this instant (and before p_before), each its own point
        while cardinality(v_exp) > 0 and v_exp[1] < v_instant.at and v_exp[1] < p_before loop
            v_total := v_total - v_qty[1];
            v_n := v_n + 1;
            if v_n = 1 then first_at := v_exp[1]; ats := '{}'; balances := '{}'; debts := '{}'; end if;
            ats[v_n] := v_exp[1]; balances[v_n] := v_total - v_debt; debts[v_n] := v_debt;
            v_exp := v_exp[2:];
            v_qty := v_qty[2:];
            if v_n = p_chunk then
                last_at := ats[v_n]; lot_expiries := v_exp; lot_quantities := v_qty;
                return next;
                v_n := 0;
            end if;
        end loop;
        exit when v_instant.at = 'infinity';
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
        v_n := v_n + 1;
        if v_n = 1 then first_at := v_instant.at; ats := '{}'; balances := '{}'; debts := '{}'; end if;
        ats[v_n] := v_instant.at; balances[v_n] := v_total - v_debt; debts[v_n] := v_debt;
        if v_n = p_chunk then
            last_at := ats[v_n]; lot_expiries := v_exp; lot_quantities := v_qty;
            return next;
            v_n := 0;
        end if;
    end loop;
    if v_n > 0 then
        last_at := ats[v_n]; lot_expiries := v_exp; lot_quantities := v_qty;
        return next;
    end if;
end;
$$;

comment on function billing._item_points(uuid, text, text, text, timestamptz, timestamptz, integer) is
    'The FEFO fold of one item history from p_from (resuming from the stored chunks before it) to p_before, as chunks of at most p_chunk points with the lots after each chunk.';
