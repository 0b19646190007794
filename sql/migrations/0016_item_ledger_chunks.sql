-- item ledger speed (issue 10): derived points are stored as chunks of up to 64 points
-- (billing.item_balance_chunks: their instants, balances and debts as arrays, and the lots
-- after the last of them) instead of one row per point (billing.item_balances). An insert
-- in the middle of a 10,000-point history rewrote 5,000 rows (two thirds of its 43 ms); it
-- now rewrites about 80 chunks (64 points keep a chunk row under the 2 kB at which values
-- move out of line). The fold continues a last chunk that has room, so appends keep chunks
-- full; reads find the chunk by index and the point by binary search. The
-- stored points are rebuilt from the inputs here (billing.rebuild_ledger), then the old
-- table goes.
-- depends: 0015_billing_job_steps

create table if not exists billing.item_balance_chunks (
    tenancy_id uuid not null,
    customer_type text not null,
    customer_id text not null,
    item_id text not null,
    first_at timestamptz not null,
    last_at timestamptz not null,
    ats timestamptz[] not null,
    balances bigint[] not null,
    debts bigint[] not null,
    lot_expiries timestamptz[] not null,
    lot_quantities bigint[] not null,
    constraint item_balance_chunks_pkey primary key (tenancy_id, customer_type, customer_id, item_id, first_at),
    constraint item_balance_chunks_points_check check (
        cardinality(ats) > 0 and cardinality(balances) = cardinality(ats) and cardinality(debts) = cardinality(ats)
        and ats[1] = first_at and ats[cardinality(ats)] = last_at),
    constraint item_balance_chunks_lots_check check (cardinality(lot_expiries) = cardinality(lot_quantities))
);
comment on table billing.item_balance_chunks is
    'Derived: the points of each item history (instant, balance, debt) in chunks, with the lots after each chunk; written only by billing._refold_item_history.';

drop function if exists billing._item_points(uuid, text, text, text, timestamptz, timestamptz);

-- copied from sql/functions/billing._item_points.sql
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

-- copied from sql/functions/billing._refold_item_history.sql
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

-- copied from sql/functions/billing._item_state_at.sql
-- billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance and debt of one item history after everything at p_at.
--
-- Before the history's points_before it is one index lookup (the last stored chunk starting
-- at or before p_at) and a binary search of its points; later (past the horizon of an open
-- repeating purchase, a history a bulk write left to refold, or one never folded) the fold
-- runs from the last valid chunk to p_at without storing anything.
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
    v_ats timestamptz[];
    v_balances bigint[];
    v_debts bigint[];
    v_low integer;
    v_high integer;
    v_mid integer;
begin
    if not isfinite(p_at) then
        raise exception 'time of the balance must be finite, got %', p_at using errcode = '22023';
    end if;
    select h.points_before into v_before from billing.item_histories h
    where h.tenancy_id = p_tenancy_id and h.customer_type = p_customer_type and h.customer_id = p_customer_id
      and h.item_id = p_item_id;
    v_before := coalesce(v_before, '-infinity');
    if p_at >= v_before then
        select p.ats, p.balances, p.debts into v_ats, v_balances, v_debts
        from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, v_before,
                                  p_at + interval '1 microsecond') p
        order by p.first_at desc
        limit 1;
    end if;
    if v_ats is null then
        select c.ats, c.balances, c.debts into v_ats, v_balances, v_debts
        from billing.item_balance_chunks c
        where c.tenancy_id = p_tenancy_id and c.customer_type = p_customer_type and c.customer_id = p_customer_id
          and c.item_id = p_item_id and c.first_at <= p_at and c.first_at < v_before
        order by c.first_at desc
        limit 1;
    end if;
    if v_ats is null then
        balance := 0;
        debt := 0;
        return next;
        return;
    end if;
    -- the last point at or before p_at (the chunk starts at or before it)
    v_low := 1;
    v_high := cardinality(v_ats);
    while v_low < v_high loop
        v_mid := (v_low + v_high + 1) / 2;
        if v_ats[v_mid] <= p_at then v_low := v_mid; else v_high := v_mid - 1; end if;
    end loop;
    balance := v_balances[v_low];
    debt := v_debts[v_low];
    return next;
end;
$$;

comment on function billing._item_state_at(uuid, text, text, text, timestamptz) is
    'Balance and debt of one item history after everything at p_at: an index lookup and a binary search where points are stored, the fold on the fly beyond.';

-- copied from sql/functions/billing.verify_ledger.sql
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

-- copied from sql/functions/billing._tg_delete_item_points.sql
-- billing._tg_delete_item_points(): statement-level AFTER DELETE trigger of
-- billing.item_histories: the derived points of deleted histories (a tenancy going away)
-- go with them. (A foreign key from the derived rows did this, but its check of every
-- stored point doubled the cost of a refold.)
create or replace function billing._tg_delete_item_points()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from billing.item_balance_chunks b
    using old_rows o
    where b.tenancy_id = o.tenancy_id and b.customer_type = o.customer_type and b.customer_id = o.customer_id
      and b.item_id = o.item_id;
    return null;
end;
$$;

comment on function billing._tg_delete_item_points() is
    'Statement trigger of billing.item_histories: delete the derived points of deleted histories.';

select billing.rebuild_ledger();
drop table billing.item_balances;
