-- item ledger (issue 10): manual item changes, their FEFO fold into derived points kept
-- current by a statement trigger in the same transaction, exact balances at any time by
-- one index lookup, and verify/rebuild of the derived state. Purchase grants (included
-- items of subscriptions and one-time purchases) join billing.item_events later.
-- depends: 0013_stripe_sync

-- inputs: manual changes; a grant may expire, a removal may not
create table if not exists billing.item_quantity_changes (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    id bigint generated always as identity,
    customer_type text not null,
    customer_id text not null,
    item_id text not null,
    delta bigint not null,
    expires_at timestamptz,
    at timestamptz not null,
    created_at timestamptz not null default now(),
    constraint item_quantity_changes_pkey primary key (tenancy_id, id),
    constraint item_quantity_changes_customer_type_check check (customer_type in ('user', 'team', 'custom')),
    constraint item_quantity_changes_customer_id_check check (customer_id <> ''),
    constraint item_quantity_changes_item_id_check check (item_id <> ''),
    constraint item_quantity_changes_delta_check check (delta <> 0),
    constraint item_quantity_changes_removal_expiry_check check (delta > 0 or expires_at is null),
    constraint item_quantity_changes_finite_check check (at > '-infinity' and at < 'infinity')
);
create index if not exists item_quantity_changes_history_idx
    on billing.item_quantity_changes (tenancy_id, customer_type, customer_id, item_id, at);

-- what the fold reads, one row per grant or removal: expires_at 'infinity' = never; seq
-- orders rows of one instant (it never changes a balance, only which row is listed first)
create or replace view billing.item_events as
    select c.tenancy_id, c.customer_type, c.customer_id, c.item_id, c.at, c.delta,
           coalesce(c.expires_at, 'infinity') as expires_at, c.id as seq, 'item_change'::text as source_kind,
           c.id::text as source_id
    from billing.item_quantity_changes c;

-- one row per item history: its lock (every writer of the history takes it first)
create table if not exists billing.item_histories (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    customer_type text not null,
    customer_id text not null,
    item_id text not null,
    refolded_at timestamptz not null default now(),
    constraint item_histories_pkey primary key (tenancy_id, customer_type, customer_id, item_id),
    constraint item_histories_customer_type_check check (customer_type in ('user', 'team', 'custom')),
    constraint item_histories_customer_id_check check (customer_id <> ''),
    constraint item_histories_item_id_check check (item_id <> '')
);

-- derived: the state after every instant at which something happens (a change or an
-- expiry); written only by billing._refold_item_history
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
    constraint item_balances_history_fkey foreign key (tenancy_id, customer_type, customer_id, item_id)
        references billing.item_histories (tenancy_id, customer_type, customer_id, item_id) on delete cascade,
    constraint item_balances_debt_check check (debt >= 0 and (debt = 0 or cardinality(lot_quantities) = 0)),
    constraint item_balances_lots_check check (cardinality(lot_expiries) = cardinality(lot_quantities))
);

-- copied from sql/functions/billing._item_points.sql
-- billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_from):
-- the fold of one item history from p_from on: one row per instant at which something
-- happens (a change, or the expiry of a lot), with the state after that instant.
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
-- Inputs: billing.item_events (manual changes and purchase grants).
-- Returns: (at, balance, debt, lot_expiries, lot_quantities) per instant, ascending.
create or replace function billing._item_points(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                p_item_id text, p_from timestamptz)
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
               array_agg(e.delta order by e.expires_at, e.seq) filter (where e.delta > 0 and e.expires_at > e.at) as grant_qty,
               array_agg(e.expires_at order by e.expires_at, e.seq) filter (where e.delta > 0 and e.expires_at > e.at) as grant_exp
        from billing.item_events e
        where e.tenancy_id = p_tenancy_id and e.customer_type = p_customer_type and e.customer_id = p_customer_id
          and e.item_id = p_item_id and e.at >= p_from
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
    while cardinality(v_exp) > 0 and v_exp[1] < 'infinity' loop
        at := v_exp[1];
        v_total := v_total - v_qty[1];
        v_exp := v_exp[2:];
        v_qty := v_qty[2:];
        balance := v_total - v_debt; debt := v_debt; lot_expiries := v_exp; lot_quantities := v_qty;
        return next;
    end loop;
end;
$$;

comment on function billing._item_points(uuid, text, text, text, timestamptz) is
    'The FEFO fold of one item history from p_from on (state before it from billing.item_balances): one row per instant with the balance, debt and lots after it.';

-- copied from sql/functions/billing._lock_item_history.sql
-- billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id): take
-- the row lock of one item history, creating its row in billing.item_histories on first use.
-- Held until the transaction ends; writers of one history queue on it.
-- Errors: 23503 unknown tenancy; 23514 bad customer type or empty id.
create or replace function billing._lock_item_history(p_tenancy_id uuid, p_customer_type text,
                                                      p_customer_id text, p_item_id text)
returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
    insert into billing.item_histories as h (tenancy_id, customer_type, customer_id, item_id)
    values (p_tenancy_id, p_customer_type, p_customer_id, p_item_id)
    on conflict (tenancy_id, customer_type, customer_id, item_id) do update set refolded_at = now();
$$;

comment on function billing._lock_item_history(uuid, text, text, text) is
    'Row-lock one item history (creating its billing.item_histories row on first use) until the transaction ends.';

-- copied from sql/functions/billing._refold_item_history.sql
-- billing._refold_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id,
-- p_from): recompute the derived points of one item history from p_from on.
--
-- Points before p_from are kept (the fold resumes from the last of them); points at or
-- after it are replaced by billing._item_points. So a change in the middle of a history
-- costs what follows it, not the whole history; '-infinity' rebuilds it all.
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
    v_points bigint;
begin
    perform billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id);
    delete from billing.item_balances b
    where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
      and b.item_id = p_item_id and b.at >= p_from;
    insert into billing.item_balances (tenancy_id, customer_type, customer_id, item_id, at, balance, debt,
                                       lot_expiries, lot_quantities)
    select p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p.at, p.balance, p.debt, p.lot_expiries,
           p.lot_quantities
    from billing._item_points(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_from) p;
    get diagnostics v_points = row_count;
    return v_points;
end;
$$;

comment on function billing._refold_item_history(uuid, text, text, text, timestamptz) is
    'Recompute the derived points of one item history from p_from on (under the history''s row lock). Returns points written.';

-- copied from sql/functions/billing._tg_refold_item_changes.sql
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
        perform billing._refold_item_history(k.tenancy_id, k.customer_type, k.customer_id, k.item_id, k.from_at)
        from (select o.tenancy_id, o.customer_type, o.customer_id, o.item_id, min(o.at) as from_at
              from old_rows o group by 1, 2, 3, 4 order by 1, 2, 3, 4) k;
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

-- copied from sql/functions/billing.item_quantity.sql
-- billing.item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance of one item of a customer at p_at (after everything that happens at p_at).
--
-- One index lookup: the last derived point at or before p_at in billing.item_balances.
-- Every instant at which the balance changes is a point, including expiries (also future
-- ones), so the answer is exact for any time; 0 for a history without points.
create or replace function billing.item_quantity(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_item_id text, p_at timestamptz default now())
returns bigint
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((
        select b.balance from billing.item_balances b
        where b.tenancy_id = p_tenancy_id and b.customer_type = p_customer_type and b.customer_id = p_customer_id
          and b.item_id = p_item_id and b.at <= p_at
        order by b.at desc
        limit 1), 0);
$$;

comment on function billing.item_quantity(uuid, text, text, text, timestamptz) is
    'Balance of one item of a customer at p_at (default now), exact for any time; 0 when it has no history.';

-- copied from sql/functions/billing.change_item_quantity.sql
-- billing.change_item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id,
-- p_delta, p_expires_at, p_allow_negative, p_at): a manual change of a customer's item
-- quantity at p_at: a grant (p_delta > 0, expiring at p_expires_at or never) or a removal
-- (p_delta < 0, no expiry).
--
-- Unless p_allow_negative, a removal must leave the balance at p_at at 0 or more. The check
-- and the write are atomic: both happen under the history's row lock, so two concurrent
-- removals that together exceed the balance cannot both pass (the second waits, then sees
-- the first). The row lands in billing.item_quantity_changes, whose trigger refolds the
-- history from p_at on. p_at may be in the past or the future.
-- Returns: the id of the change.
-- Errors: 22004 null argument; 22023 zero delta, or a removal with an expiry; 23514 bad
-- customer type or empty id; 23503 unknown tenancy; P0001 (insufficient_quantity) a
-- removal the balance does not cover, naming the balance. Nothing is written on error.
-- Locks: the history's row in billing.item_histories.
create or replace function billing.change_item_quantity(p_tenancy_id uuid, p_customer_type text,
                                                        p_customer_id text, p_item_id text, p_delta bigint,
                                                        p_expires_at timestamptz default null,
                                                        p_allow_negative boolean default false,
                                                        p_at timestamptz default now())
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_balance bigint;
    v_id bigint;
begin
    if p_tenancy_id is null or p_customer_type is null or p_customer_id is null or p_item_id is null
       or p_delta is null or p_allow_negative is null or p_at is null then
        raise exception 'tenancy, customer, item, delta, allow-negative and time must not be null'
            using errcode = '22004';
    end if;
    if p_delta = 0 then
        raise exception 'delta of item % must not be 0', p_item_id using errcode = '22023';
    end if;
    if p_delta < 0 and p_expires_at is not null then
        raise exception 'a removal (delta %) of item % cannot expire (expires_at %)', p_delta, p_item_id, p_expires_at
            using errcode = '22023';
    end if;
    perform billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id);
    if p_delta < 0 and not p_allow_negative then
        v_balance := billing.item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at);
        if v_balance + p_delta < 0 then
            raise exception 'insufficient quantity of item % for %:%: % at %, change %', p_item_id, p_customer_type,
                p_customer_id, v_balance, p_at, p_delta
                using errcode = 'P0001', hint = 'pass p_allow_negative => true to allow a negative balance';
        end if;
    end if;
    insert into billing.item_quantity_changes (tenancy_id, customer_type, customer_id, item_id, delta, expires_at, at)
    values (p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_delta, p_expires_at, p_at)
    returning id into v_id;
    return v_id;
end;
$$;

comment on function billing.change_item_quantity(uuid, text, text, text, bigint, timestamptz, boolean, timestamptz) is
    'Grant (positive delta, optional expiry) or remove (negative) items of a customer at p_at; a removal the balance does not cover fails unless p_allow_negative. Returns the change id.';

-- copied from sql/functions/billing.verify_ledger.sql
-- billing.verify_ledger(): the differences between the derived points of every item history
-- (billing.item_balances) and a fold of its inputs from nothing (billing._item_points from
-- '-infinity'). Empty when derived state is right.
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
    with histories as (
        select e.tenancy_id, e.customer_type, e.customer_id, e.item_id from billing.item_events e
        union
        select b.tenancy_id, b.customer_type, b.customer_id, b.item_id from billing.item_balances b
    ), expected as (
        select h.tenancy_id, h.customer_type, h.customer_id, h.item_id, p.*
        from histories h
        cross join lateral billing._item_points(h.tenancy_id, h.customer_type, h.customer_id, h.item_id,
                                                '-infinity') p
    )
    select coalesce(x.tenancy_id, s.tenancy_id), coalesce(x.customer_type, s.customer_type),
           coalesce(x.customer_id, s.customer_id), coalesce(x.item_id, s.item_id), coalesce(x.at, s.at),
           x.balance, s.balance, x.debt, s.debt
    from expected x
    full join billing.item_balances s
      on s.tenancy_id = x.tenancy_id and s.customer_type = x.customer_type and s.customer_id = x.customer_id
     and s.item_id = x.item_id and s.at = x.at
    where (x.balance, x.debt, x.lot_expiries, x.lot_quantities)
          is distinct from (s.balance, s.debt, s.lot_expiries, s.lot_quantities)
    order by 1, 2, 3, 4, 5;
$$;

comment on function billing.verify_ledger() is
    'Differences between the stored item balances and a fold of the ledger inputs from nothing; empty when derived state is right.';

-- copied from sql/functions/billing.rebuild_ledger.sql
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

drop trigger if exists item_quantity_changes_refold_insert on billing.item_quantity_changes;
create trigger item_quantity_changes_refold_insert
    after insert on billing.item_quantity_changes
    referencing new table as new_rows
    for each statement execute function billing._tg_refold_item_changes();
drop trigger if exists item_quantity_changes_refold_update on billing.item_quantity_changes;
create trigger item_quantity_changes_refold_update
    after update on billing.item_quantity_changes
    referencing old table as old_rows new table as new_rows
    for each statement execute function billing._tg_refold_item_changes();
drop trigger if exists item_quantity_changes_refold_delete on billing.item_quantity_changes;
create trigger item_quantity_changes_refold_delete
    after delete on billing.item_quantity_changes
    referencing old table as old_rows
    for each statement execute function billing._tg_refold_item_changes();
