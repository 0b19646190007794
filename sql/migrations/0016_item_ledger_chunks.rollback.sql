-- Rollback of 0016: points go back to one row per instant in billing.item_balances, the
-- functions that read and write them get back their 0014 definitions (copied below), the
-- points are rebuilt from the inputs, and the chunks go.
create table if not exists billing.item_balances (
    tenancy_id uuid not null,
    customer_type text not null,
    customer_id text not null,
    item_id text not null,
    at timestamptz not null,
    balance bigint not null,
    debt bigint not null,
    lot_expiries timestamptz[] not null,
    lot_quantities bigint[] not null,
    constraint item_balances_pkey primary key (tenancy_id, customer_type, customer_id, item_id, at),
    constraint item_balances_debt_check check (debt >= 0 and (debt = 0 or cardinality(lot_quantities) = 0)),
    constraint item_balances_lots_check check (cardinality(lot_expiries) = cardinality(lot_quantities))
);


drop function if exists billing._item_points(uuid, text, text, text, timestamptz, timestamptz, integer);

-- copied from sql/functions/billing._item_points.sql as of 0014_item_ledger
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

-- copied from sql/functions/billing._refold_item_history.sql as of 0014_item_ledger
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

-- copied from sql/functions/billing._item_state_at.sql as of 0014_item_ledger
-- billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance and debt of one item history after everything at p_at.
--
-- Before the history's points_before it is one index lookup (the last stored point at or
-- before p_at); later (past the horizon of an open repeating purchase, a history a bulk
-- write left to refold, or one never folded) the fold runs from the last valid point to
-- p_at without storing anything.
-- Returns: one row; (0, 0) for a customer without history of the item.
-- Errors: 22023 an infinite p_at.
create or replace function billing._item_state_at(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                  p_item_id text, p_at timestamptz)
returns table (balance bigint, debt bigint)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before timestamptz;
begin
    if not isfinite(p_at) then
        raise exception 'time of the balance must be finite, got %', p_at using errcode = '22023';
    end if;
    select h.points_before into v_before from billing.item_histories h
    where h.tenancy_id = p_tenancy_id and h.customer_type = p_customer_type and h.customer_id = p_customer_id
      and h.item_id = p_item_id;
    v_before := coalesce(v_before, '-infinity');
    if p_at >= v_before then
        select p.balance, p.debt into balance, debt
        from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_before,
                                  p_at + interval '1 microsecond') p
        order by p.at desc
        limit 1;
        if found then
            return next;
            return;
        end if;
    end if;
    select b.balance, b.debt into balance, debt
    from billing.item_balances b
    where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
      and b.item_id = p_item_id and b.at <= p_at and b.at < v_before
    order by b.at desc
    limit 1;
    balance := coalesce(balance, 0);
    debt := coalesce(debt, 0);
    return next;
end;
$$;

comment on function billing._item_state_at(uuid, text, text, text, timestamptz) is
    'Balance and debt of one item history after everything at p_at: an index lookup where points are stored, the fold on the fly beyond.';

-- copied from sql/functions/billing.verify_ledger.sql as of 0014_item_ledger
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

-- copied from sql/functions/billing._tg_delete_item_points.sql as of 0014_item_ledger
-- billing._tg_delete_item_points(): statement-level AFTER DELETE trigger of
-- billing.item_histories: the derived points of deleted histories (a tenancy going away)
-- go with them. (A foreign key from billing.item_balances did this, but its check of every
-- stored point doubled the cost of a refold.)
create or replace function billing._tg_delete_item_points()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from billing.item_balances b
    using old_rows o
    where b.tenancy_id = o.tenancy_id and b.customer_type = o.customer_type and b.customer_id = o.customer_id
      and b.item_id = o.item_id;
    return null;
end;
$$;

comment on function billing._tg_delete_item_points() is
    'Statement trigger of billing.item_histories: delete the derived points of deleted histories.';

select billing.rebuild_ledger();
drop table billing.item_balance_chunks;
