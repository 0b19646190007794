-- item ledger (issue 10): manual item changes and the grants of purchases' included items,
-- their FEFO fold into derived points kept current by statement triggers in the same
-- transaction, exact balances at any time (an index lookup where points are stored, the
-- fold on the fly beyond), and verify/rebuild/refold of the derived state.
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

-- one row per item history with stored points: its lock (every writer of the history takes
-- it first), the horizon up to which a refold stores points (billing._item_horizon) and
-- points_before: the stored points are right for instants before it (the horizon, or
-- earlier when a bulk write left the rest to be folded on read)
create table if not exists billing.item_histories (
    tenancy_id uuid not null references app.tenancies (id) on delete cascade,
    customer_type text not null,
    customer_id text not null,
    item_id text not null,
    points_before timestamptz not null default '-infinity',
    horizon timestamptz not null default 'infinity',
    refolded_at timestamptz not null default now(),
    constraint item_histories_pkey primary key (tenancy_id, customer_type, customer_id, item_id),
    constraint item_histories_customer_type_check check (customer_type in ('user', 'team', 'custom')),
    constraint item_histories_customer_id_check check (customer_id <> ''),
    constraint item_histories_item_id_check check (item_id <> '')
);

-- derived: the state after every instant at which something happens (a change or an
-- expiry); written only by billing._refold_item_history. No foreign key to its history (a
-- check per stored point doubled a refold's cost): a statement trigger on
-- billing.item_histories deletes the points of deleted histories.
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

-- copied from sql/functions/billing._calendar_interval.sql
-- billing._calendar_interval(p_spec): [n, "day" | "week" | "month" | "year"] as an interval
-- (calendar arithmetic: a month from Jan 31 is Feb 28 or 29); null for anything else, such
-- as "never". The spec is validated by billing.upsert_product before it is stored.
create or replace function billing._calendar_interval(p_spec jsonb)
returns interval
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case when jsonb_typeof(p_spec) = 'array' then
               case p_spec ->> 1
                   when 'day' then make_interval(days => (p_spec ->> 0)::integer)
                   when 'week' then make_interval(weeks => (p_spec ->> 0)::integer)
                   when 'month' then make_interval(months => (p_spec ->> 0)::integer)
                   when 'year' then make_interval(years => (p_spec ->> 0)::integer)
               end
           end;
$$;

comment on function billing._calendar_interval(jsonb) is
    'A [n, unit] spec (unit day, week, month or year) as a calendar interval; null for "never" or anything else.';

-- copied from sql/functions/billing._item_events.sql
-- billing._item_events(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_from,
-- p_before): the inputs of one item history with times in [p_from, p_before): manual
-- changes, and the grants and adjustments that the customer's purchases make of the item.
--
-- Purchases: subscriptions (from started_at to ended_at, or to current_period_end when
-- set to cancel at period end, else open) and one-time purchases (from purchased_at to
-- revoked_at, else open), each with its quantity. A subscription's version changes at each
-- row of billing.subscription_moves: the versions over time are the segments of the
-- purchase. For an included item of a segment's version, {quantity q, repeat r, expires e}:
--   - grants of q x purchase quantity at start + k x r (k = 0, 1, ...; only k = 0 without
--     r) that fall in the segment and strictly before the end;
--   - each expires by e: never ('infinity'); when-purchase-expires at the end;
--     when-repeated at the next repeat or the end, whichever is first;
--   - at a segment's start after a version change, an adjustment by the difference of the
--     quantities (times purchase quantity): a grant with the expiry the item's rule gives
--     at that instant, or a removal; none for a when-repeated item at one of its repeat
--     instants (its lot expires there and the repeat grants the new quantity).
-- An open purchase that repeats has grants without end: p_before must then be finite.
-- Returns: (at, delta, expires_at ('infinity' = never), source_kind, source_id).
create or replace function billing._item_events(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                p_item_id text, p_from timestamptz, p_before timestamptz)
returns table (at timestamptz, delta bigint, expires_at timestamptz, source_kind text, source_id text)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    -- PL/pgSQL, not SQL: its plans are kept for the session (a SQL function's body is planned
    -- at every call, and this one is called once per history and refold)
    return query
    select c.at, c.delta, coalesce(c.expires_at, 'infinity'), 'item_change'::text, c.id::text
    from billing.item_quantity_changes c
    where c.tenancy_id = p_tenancy_id and c.customer_type = p_customer_type and c.customer_id = p_customer_id
      and c.item_id = p_item_id and c.at >= p_from and c.at < p_before;
    if not exists (select 1 from billing.subscriptions s
                   where s.tenancy_id = p_tenancy_id and s.customer_type = p_customer_type
                     and s.customer_id = p_customer_id)
       and not exists (select 1 from billing.one_time_purchases o
                       where o.tenancy_id = p_tenancy_id and o.customer_type = p_customer_type
                         and o.customer_id = p_customer_id) then
        return;  -- manual changes only
    end if;
    return query
    with purchases as (
        select 'subscription'::text as kind, s.id, s.started_at as start_at,
               coalesce(s.ended_at, case when s.cancel_at_period_end then s.current_period_end end,
                        'infinity') as end_at,
               s.quantity::bigint as quantity, s.product_version_id
        from billing.subscriptions s
        where s.tenancy_id = p_tenancy_id and s.customer_type = p_customer_type and s.customer_id = p_customer_id
        union all
        select 'one_time_purchase', o.id, o.purchased_at, coalesce(o.revoked_at, 'infinity'), o.quantity,
               o.product_version_id
        from billing.one_time_purchases o
        where o.tenancy_id = p_tenancy_id and o.customer_type = p_customer_type and o.customer_id = p_customer_id
    ), versions_over_time as (
        -- the version at the start (the first move's from-version), then each move's
        select pu.kind, pu.id, pu.start_at, pu.end_at, pu.quantity, pu.start_at as seg_start, 0::bigint as ord,
               coalesce((select m.from_version_id from billing.subscription_moves m
                         where pu.kind = 'subscription' and m.tenancy_id = p_tenancy_id and m.subscription_id = pu.id
                         order by m.moved_at, m.id limit 1), pu.product_version_id) as version_id
        from purchases pu
        union all
        select pu.kind, pu.id, pu.start_at, pu.end_at, pu.quantity, greatest(m.moved_at, pu.start_at), m.id,
               m.to_version_id
        from purchases pu
        join billing.subscription_moves m on m.tenancy_id = p_tenancy_id and m.subscription_id = pu.id
        where pu.kind = 'subscription'
    ), segments as (
        select vt.kind, vt.id, vt.start_at, vt.end_at, vt.quantity, vt.seg_start, vt.ord,
               lead(vt.seg_start, 1, 'infinity') over w as seg_end,
               v.content -> 'included_items' -> p_item_id as item,
               lag(v.content -> 'included_items' -> p_item_id) over w as prev_item
        from versions_over_time vt
        join billing.product_versions v on v.id = vt.version_id
        window w as (partition by vt.kind, vt.id order by vt.seg_start, vt.ord)
    ), rules as (
        select sg.*, least(sg.seg_end, sg.end_at) as stop_at,
               coalesce((sg.item ->> 'quantity')::bigint, 0) * sg.quantity as qty,
               coalesce((sg.prev_item ->> 'quantity')::bigint, 0) * sg.quantity as prev_qty,
               billing._calendar_interval(coalesce(sg.item, sg.prev_item) -> 'repeat') as every,
               coalesce(coalesce(sg.item, sg.prev_item) ->> 'expires', 'never') as expires
        from segments sg
        where sg.item is not null or sg.prev_item is not null
    ), grants as (
        select r.kind, r.id, g.at, r.qty as delta,
               case r.expires
                   when 'never' then 'infinity'::timestamptz
                   when 'when-purchase-expires' then r.end_at
                   else least(r.start_at + (g.k + 1) * r.every, r.end_at)
               end as expires_at
        from rules r
        cross join lateral (
            select k, r.start_at + k * coalesce(r.every, interval '0') as at
            from generate_series(0, case when r.every is null then 0 else
                     -- enough repeats to pass the stop (an interval is at least 28 days per month)
                     floor(extract(epoch from least(r.stop_at, p_before) - r.start_at)
                           / extract(epoch from justify_days(r.every)) * 31 / 28)::bigint + 1 end) as k
        ) g
        where r.qty > 0 and g.at >= r.seg_start and g.at < r.stop_at and g.at >= p_from and g.at < p_before
    ), adjustments as (
        select r.kind, r.id, r.seg_start as at, r.qty - r.prev_qty as delta,
               case when r.qty < r.prev_qty then 'infinity'::timestamptz  -- a removal: no expiry
                    when r.expires = 'never' then 'infinity'
                    when r.expires = 'when-purchase-expires' then r.end_at
                    else least(n.next_at, r.end_at)
               end as expires_at
        from rules r
        left join lateral (
            -- the first repeat at or after the segment's start (none without a repeat)
            select r.start_at + (greatest(ceil(extract(epoch from r.seg_start - r.start_at)
                                               / extract(epoch from justify_days(r.every)) * 28 / 31), 1)::bigint
                                 + j) * r.every as next_at
            from generate_series(0, 3) as j
            where r.every is not null
              and r.start_at + (greatest(ceil(extract(epoch from r.seg_start - r.start_at)
                                              / extract(epoch from justify_days(r.every)) * 28 / 31), 1)::bigint
                                + j) * r.every >= r.seg_start
            order by 1
            limit 1
        ) n on true
        where r.ord > 0 and r.qty <> r.prev_qty and r.seg_start < r.stop_at
          and r.seg_start >= p_from and r.seg_start < p_before
          and not (r.expires = 'when-repeated' and n.next_at is not distinct from r.seg_start)
    )
    select g.at, g.delta, g.expires_at, g.kind, g.id::text from grants g
    union all
    select a.at, a.delta, a.expires_at, a.kind, a.id::text from adjustments a;
end;
$$;

comment on function billing._item_events(uuid, text, text, text, timestamptz, timestamptz) is
    'Inputs of one item history in [p_from, p_before): manual changes and the grants and version-change adjustments of the customer''s purchases.';

-- copied from sql/functions/billing._item_horizon.sql
-- billing._item_horizon(p_tenancy_id, p_customer_type, p_customer_id, p_item_id): up to when
-- the derived points of an item history are stored. 'infinity' (everything) unless an open
-- purchase of the customer (no end yet) repeats the item: its grants never end, so points
-- are stored for 13 months from now and billing.item_quantity folds later times on the fly.
create or replace function billing._item_horizon(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_item_id text)
returns timestamptz
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    -- PL/pgSQL for its cached plan (called at every refold)
    return case when exists (
        select 1 from billing.subscriptions s
        join billing.product_versions v on v.id = s.product_version_id
        where s.tenancy_id = p_tenancy_id and s.customer_type = p_customer_type and s.customer_id = p_customer_id
          and s.ended_at is null and not s.cancel_at_period_end
          and jsonb_typeof(v.content -> 'included_items' -> p_item_id -> 'repeat') = 'array'
        union all
        select 1 from billing.one_time_purchases o
        join billing.product_versions v on v.id = o.product_version_id
        where o.tenancy_id = p_tenancy_id and o.customer_type = p_customer_type and o.customer_id = p_customer_id
          and o.revoked_at is null
          and jsonb_typeof(v.content -> 'included_items' -> p_item_id -> 'repeat') = 'array'
    ) then now() + interval '13 months' else 'infinity'::timestamptz end;
end;
$$;

comment on function billing._item_horizon(uuid, text, text, text) is
    'Up to when the points of an item history are stored: infinity, or 13 months ahead while an open purchase repeats the item.';

-- copied from sql/functions/billing._lock_item_history.sql
-- billing._lock_item_history(p_tenancy_id, p_customer_type, p_customer_id, p_item_id): take
-- the row lock of one item history, creating its row in billing.item_histories on first use
-- (with no valid points). Held until the transaction ends; writers of one history queue on it.
-- Returns: the history's points_before (its stored points are valid before it).
-- Errors: 23503 unknown tenancy; 23514 bad customer type or empty id.
create or replace function billing._lock_item_history(p_tenancy_id uuid, p_customer_type text,
                                                      p_customer_id text, p_item_id text)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_points_before timestamptz;
begin
    -- PL/pgSQL for its cached plan (called at every refold)
    insert into billing.item_histories as h (tenancy_id, customer_type, customer_id, item_id)
    values (p_tenancy_id, p_customer_type, p_customer_id, p_item_id)
    on conflict (tenancy_id, customer_type, customer_id, item_id) do update set points_before = h.points_before
    returning h.points_before into v_points_before;
    return v_points_before;
end;
$$;

comment on function billing._lock_item_history(uuid, text, text, text) is
    'Row-lock one item history (creating its billing.item_histories row on first use) until the transaction ends; returns its points_before.';

-- copied from sql/functions/billing._tg_delete_item_points.sql
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

-- copied from sql/functions/billing._item_points.sql
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

-- copied from sql/functions/billing._refold_item_history.sql
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

-- copied from sql/functions/billing._refresh_item_histories.sql
-- billing._refresh_item_histories(p_histories): bring item histories whose purchase inputs
-- changed up to date, each from its given instant. p_histories is a jsonb array of
-- {tenancy_id, customer_type, customer_id, item_id, from}.
--
-- Up to 100 histories (one grant, a cancel, a Stripe sync of a customer) are refolded now,
-- in key order. More (a bulk backfill or regen) are marked instead: their points_before
-- drops to the instant, so billing.item_quantity folds past it on the fly (still exact) until
-- billing.refold_item_histories() (run by pyglue db init) stores them again; a history
-- without a row needs nothing (it is folded on the fly from nothing).
-- Returns: histories refolded now.
create or replace function billing._refresh_item_histories(p_histories jsonb)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint := jsonb_array_length(p_histories);
begin
    if v_count = 0 then
        return 0;
    end if;
    if v_count <= 100 then
        perform billing._refold_item_history(k.tenancy_id, k.customer_type, k.customer_id, k.item_id, k.from_at)
        from (select (x ->> 'tenancy_id')::uuid as tenancy_id, x ->> 'customer_type' as customer_type,
                     x ->> 'customer_id' as customer_id, x ->> 'item_id' as item_id,
                     (x ->> 'from')::timestamptz as from_at
              from jsonb_array_elements(p_histories) x
              order by 1, 2, 3, 4) k;
        return v_count;
    end if;
    update billing.item_histories h set points_before = least(h.points_before, k.from_at)
    from (select (x ->> 'tenancy_id')::uuid as tenancy_id, x ->> 'customer_type' as customer_type,
                 x ->> 'customer_id' as customer_id, x ->> 'item_id' as item_id,
                 (x ->> 'from')::timestamptz as from_at
          from jsonb_array_elements(p_histories) x) k
    where h.tenancy_id = k.tenancy_id and h.customer_type = k.customer_type and h.customer_id = k.customer_id
      and h.item_id = k.item_id and h.points_before > k.from_at;
    return 0;
end;
$$;

comment on function billing._refresh_item_histories(jsonb) is
    'Refold item histories whose purchases changed (up to 100 at once), or mark them to be folded on read and by billing.refold_item_histories().';

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

-- copied from sql/functions/billing._tg_refresh_subscription_items.sql
-- billing._tg_refresh_subscription_items(): statement-level AFTER INSERT / UPDATE / DELETE
-- trigger of billing.subscriptions: the item histories that the changed subscriptions feed
-- are brought up to date in the same transaction.
--
-- Which subscriptions count: every inserted one; an updated one when the update changes
-- what its grants depend on (customer, start, end, cancel-at-period-end, period end,
-- quantity, or a version with other included items: a regen to content with the same items
-- changes nothing); every deleted one.
-- Up to 20 of them (a grant, a cancel, a Stripe sync of a customer): each history they
-- feed (every included item of every version they were on, for the old and the new
-- customer) is refolded now by billing._refresh_item_histories, from the subscription's
-- start, or from its last move when only the version changed (what came before the move
-- stays as it is). More (a bulk backfill or regen) and every DELETE (a tenancy going away):
-- the stored histories of their customers are marked from the start instead (their
-- points_before moves back, so reads fold past it on the fly, still exact, until
-- billing.refold_item_histories stores them again); a history without a row needs nothing.
-- SECURITY DEFINER: a role that may write subscriptions need not be able to write derived state.
create or replace function billing._tg_refresh_subscription_items()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows bigint;
    v_moves text[];
    v_histories jsonb;
begin
    -- one statement per operation: a transition table that the trigger does not have
    -- cannot even be named
    if tg_op = 'INSERT' then
        select count(*) into v_rows from new_rows;
        if v_rows > 20 then
            update billing.item_histories h set points_before = least(h.points_before, n.started_at)
            from new_rows n
            where h.tenancy_id = n.tenancy_id and h.customer_type = n.customer_type
              and h.customer_id = n.customer_id and h.points_before > n.started_at;
            return null;
        end if;
        select jsonb_agg(k) into v_histories from (
            select n.tenancy_id, n.customer_type, n.customer_id, i.item_id, min(n.started_at) as "from"
            from new_rows n
            join billing.product_versions v on v.id = n.product_version_id
            cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as i(item_id)
            group by 1, 2, 3, 4) k;
    elsif tg_op = 'UPDATE' then
        -- the version moves that change included items, as 'from to' (few: looked up once
        -- per pair, not per row)
        select coalesce(array_agg(p.from_id || ' ' || p.to_id), '{}') into v_moves
        from (select distinct o.product_version_id as from_id, n.product_version_id as to_id
              from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
              where o.product_version_id <> n.product_version_id) p
        join billing.product_versions a on a.id = p.from_id
        join billing.product_versions b on b.id = p.to_id
        where a.content -> 'included_items' is distinct from b.content -> 'included_items';
        select count(*) into v_rows
        from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
        where (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
               o.current_period_end, o.quantity)
              is distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                n.cancel_at_period_end, n.current_period_end, n.quantity)
           or o.product_version_id || ' ' || n.product_version_id = any (v_moves);
        if v_rows = 0 then
            return null;
        end if;
        if v_rows > 20 then
            update billing.item_histories h set points_before = least(h.points_before, c.from_at)
            from (select o.tenancy_id, o.customer_type, o.customer_id, least(o.started_at, n.started_at) as from_at
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  union all
                  select n.tenancy_id, n.customer_type, n.customer_id, least(o.started_at, n.started_at)
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id) c
            where h.tenancy_id = c.tenancy_id and h.customer_type = c.customer_type
              and h.customer_id = c.customer_id and h.points_before > c.from_at;
            return null;
        end if;
        select jsonb_agg(k) into v_histories from (
            select x.tenancy_id, cu.customer_type, cu.customer_id, i.item_id, min(x.from_at) as "from"
            from (select o.tenancy_id, o.id,
                         -- a version change alone changes nothing before the move: from there
                         case when (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
                                    o.current_period_end, o.quantity)
                                   is not distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                                         n.cancel_at_period_end, n.current_period_end, n.quantity)
                              then greatest(o.started_at,
                                            (select max(m.moved_at) from billing.subscription_moves m
                                             where m.tenancy_id = o.tenancy_id and m.subscription_id = o.id))
                              else least(o.started_at, n.started_at)
                         end as from_at,
                         o.product_version_id as old_version_id, n.product_version_id as new_version_id,
                         o.customer_type as old_type, o.customer_id as old_id, n.customer_type as new_type,
                         n.customer_id as new_id
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  where (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
                         o.current_period_end, o.quantity)
                        is distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                          n.cancel_at_period_end, n.current_period_end, n.quantity)
                     or o.product_version_id || ' ' || n.product_version_id = any (v_moves)) x
            cross join lateral (values (x.old_type, x.old_id), (x.new_type, x.new_id)) as cu(customer_type, customer_id)
            cross join lateral (
                select jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as item_id
                from billing.product_versions v
                where v.id in (x.old_version_id, x.new_version_id)
                   or v.id in (select m.from_version_id from billing.subscription_moves m
                               where m.tenancy_id = x.tenancy_id and m.subscription_id = x.id)
            ) i
            group by 1, 2, 3, 4) k;
    else
        update billing.item_histories h set points_before = least(h.points_before, o.started_at)
        from old_rows o
        where h.tenancy_id = o.tenancy_id and h.customer_type = o.customer_type and h.customer_id = o.customer_id
          and h.points_before > o.started_at;
        return null;
    end if;
    perform billing._refresh_item_histories(coalesce(v_histories, '[]'));
    return null;
end;
$$;

comment on function billing._tg_refresh_subscription_items() is
    'Statement trigger of billing.subscriptions: refresh the item histories the changed subscriptions feed (refold up to 20 subscriptions'' histories, mark more).';

-- copied from sql/functions/billing._tg_refresh_purchase_items.sql
-- billing._tg_refresh_purchase_items(): statement-level AFTER INSERT / UPDATE / DELETE
-- trigger of billing.one_time_purchases: like billing._tg_refresh_subscription_items, the
-- item histories the changed purchases feed are brought up to date from the purchase time.
-- An UPDATE counts when it changes the customer, the purchase time, the revocation time,
-- the quantity or the version. An INSERT of more than 20 rows, and a DELETE, only mark
-- the customers' stored histories.
-- SECURITY DEFINER: a role that may write purchases need not be able to write derived state.
create or replace function billing._tg_refresh_purchase_items()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows bigint;
    v_histories jsonb;
begin
    if tg_op = 'INSERT' then
        select count(*) into v_rows from new_rows;
        if v_rows > 20 then
            update billing.item_histories h set points_before = least(h.points_before, n.purchased_at)
            from new_rows n
            where h.tenancy_id = n.tenancy_id and h.customer_type = n.customer_type
              and h.customer_id = n.customer_id and h.points_before > n.purchased_at;
            return null;
        end if;
        select jsonb_agg(k) into v_histories from (
            select n.tenancy_id, n.customer_type, n.customer_id, i.item_id, min(n.purchased_at) as "from"
            from new_rows n
            join billing.product_versions v on v.id = n.product_version_id
            cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as i(item_id)
            group by 1, 2, 3, 4) k;
    elsif tg_op = 'UPDATE' then
        select jsonb_agg(k) into v_histories from (
            select c.tenancy_id, c.customer_type, c.customer_id, i.item_id, min(c.from_at) as "from"
            from (select o.tenancy_id, o.customer_type, o.customer_id, o.product_version_id,
                         least(o.purchased_at, n.purchased_at) as from_at
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  where (o.customer_type, o.customer_id, o.purchased_at, o.revoked_at, o.quantity, o.product_version_id)
                        is distinct from (n.customer_type, n.customer_id, n.purchased_at, n.revoked_at, n.quantity,
                                          n.product_version_id)
                  union all
                  select n.tenancy_id, n.customer_type, n.customer_id, n.product_version_id,
                         least(o.purchased_at, n.purchased_at)
                  from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
                  where (o.customer_type, o.customer_id, o.purchased_at, o.revoked_at, o.quantity, o.product_version_id)
                        is distinct from (n.customer_type, n.customer_id, n.purchased_at, n.revoked_at, n.quantity,
                                          n.product_version_id)) c
            join billing.product_versions v on v.id = c.product_version_id
            cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) as i(item_id)
            group by 1, 2, 3, 4) k;
    else
        update billing.item_histories h set points_before = least(h.points_before, o.purchased_at)
        from old_rows o
        where h.tenancy_id = o.tenancy_id and h.customer_type = o.customer_type and h.customer_id = o.customer_id
          and h.points_before > o.purchased_at;
        return null;
    end if;
    perform billing._refresh_item_histories(coalesce(v_histories, '[]'));
    return null;
end;
$$;

comment on function billing._tg_refresh_purchase_items() is
    'Statement trigger of billing.one_time_purchases: refresh the item histories the changed purchases feed.';

-- copied from sql/functions/billing._item_state_at.sql
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

-- copied from sql/functions/billing.item_quantity.sql
-- billing.item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at): the
-- balance of one item of a customer at p_at (after everything that happens at p_at).
--
-- Exact for any time: every instant at which the balance changes is a stored point (future
-- expiries and repeats included) up to the history's horizon, read by one index lookup;
-- later times are folded on the fly, so due repeats count even if no job has run (see
-- billing._item_state_at).
-- Returns: the balance; 0 for a customer without history of the item.
-- Errors: 22023 an infinite p_at.
create or replace function billing.item_quantity(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_item_id text, p_at timestamptz default now())
returns bigint
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select s.balance from billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at) s;
$$;

comment on function billing.item_quantity(uuid, text, text, text, timestamptz) is
    'Balance of one item of a customer at p_at (default now), exact for any time; 0 when it has no history.';

-- copied from sql/functions/billing.change_item_quantity.sql
-- billing.change_item_quantity(p_tenancy_id, p_customer_type, p_customer_id, p_item_id,
-- p_delta, p_expires_at, p_allow_negative, p_at): a manual change of a customer's item
-- quantity at p_at: a grant (p_delta > 0, expiring at p_expires_at or never) or a removal
-- (p_delta < 0, no expiry).
--
-- Unless p_allow_negative, a removal must be covered by what is there at p_at (lots
-- expiring at p_at included: removals at an instant come before its expiries): the change
-- is written, the history refolded (the trigger of billing.item_quantity_changes), and if
-- that made new debt at p_at the call fails and nothing stays written. The check and the
-- write are atomic: both happen under the history's row lock, so two concurrent removals
-- that together exceed the balance cannot both pass (the second waits, then sees the
-- first). p_at may be in the past or the future.
-- Returns: the id of the change.
-- Errors: 22004 null argument; 22023 zero delta, or a removal with an expiry; 23514 bad
-- customer type or empty id; 23503 unknown tenancy; P0001 (insufficient_quantity) a
-- removal the balance does not cover, naming what is available. Nothing is written on error.
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
    v_debt_before bigint;
    v_debt_after bigint;
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
        select s.debt into v_debt_before
        from billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at) s;
    end if;
    insert into billing.item_quantity_changes (tenancy_id, customer_type, customer_id, item_id, delta, expires_at, at)
    values (p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_delta, p_expires_at, p_at)
    returning id into v_id;
    if p_delta < 0 and not p_allow_negative then
        -- covered unless the fold (the trigger has refolded) made new debt at p_at: removals
        -- at an instant come after its grants and before its expiries
        select s.debt into v_debt_after
        from billing._item_state_at(p_tenancy_id, p_customer_type, p_customer_id, p_item_id, p_at) s;
        if v_debt_after > v_debt_before then
            raise exception 'insufficient quantity of item % for %:%: % available at %, change %', p_item_id,
                p_customer_type, p_customer_id, -p_delta - (v_debt_after - v_debt_before), p_at, p_delta
                using errcode = 'P0001', hint = 'pass p_allow_negative => true to allow a negative balance';
        end if;
    end if;
    return v_id;
end;
$$;

comment on function billing.change_item_quantity(uuid, text, text, text, bigint, timestamptz, boolean, timestamptz) is
    'Grant (positive delta, optional expiry) or remove (negative) items of a customer at p_at; a removal the balance does not cover fails unless p_allow_negative. Returns the change id.';

-- copied from sql/functions/billing.verify_ledger.sql
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

-- copied from sql/functions/billing.rebuild_ledger.sql
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

-- copied from sql/functions/billing.refold_item_histories.sql
-- billing.refold_item_histories(p_limit): store again the points of item histories that are
-- folded on read: those a bulk write marked (points_before moved back to the instant it
-- changed) and those whose horizon (13 months ahead for an open repeating purchase) is less
-- than a month away. Reads are exact either way; this makes them index lookups again.
-- pyglue db init runs it. p_limit: at most that many histories (null: all).
-- Returns: histories refolded.
-- Locks: each history's row, in key order, until the transaction ends.
create or replace function billing.refold_item_histories(p_limit integer default null)
returns bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
    select count(billing._refold_item_history(h.tenancy_id, h.customer_type, h.customer_id, h.item_id,
                                              h.points_before))
    from (select h.tenancy_id, h.customer_type, h.customer_id, h.item_id, h.points_before
          from billing.item_histories h
          where h.points_before < h.horizon or h.horizon < now() + interval '1 month'
          order by 1, 2, 3, 4
          limit p_limit) h;
$$;

comment on function billing.refold_item_histories(integer) is
    'Store again the points of item histories a bulk write left to be folded on read, or whose horizon is near. Returns histories refolded.';

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

drop trigger if exists subscriptions_refresh_items_insert on billing.subscriptions;
create trigger subscriptions_refresh_items_insert
    after insert on billing.subscriptions
    referencing new table as new_rows
    for each statement execute function billing._tg_refresh_subscription_items();
drop trigger if exists subscriptions_refresh_items_update on billing.subscriptions;
create trigger subscriptions_refresh_items_update
    after update on billing.subscriptions
    referencing old table as old_rows new table as new_rows
    for each statement execute function billing._tg_refresh_subscription_items();
drop trigger if exists subscriptions_refresh_items_delete on billing.subscriptions;
create trigger subscriptions_refresh_items_delete
    after delete on billing.subscriptions
    referencing old table as old_rows
    for each statement execute function billing._tg_refresh_subscription_items();
drop trigger if exists one_time_purchases_refresh_items_insert on billing.one_time_purchases;
create trigger one_time_purchases_refresh_items_insert
    after insert on billing.one_time_purchases
    referencing new table as new_rows
    for each statement execute function billing._tg_refresh_purchase_items();
drop trigger if exists one_time_purchases_refresh_items_update on billing.one_time_purchases;
create trigger one_time_purchases_refresh_items_update
    after update on billing.one_time_purchases
    referencing old table as old_rows new table as new_rows
    for each statement execute function billing._tg_refresh_purchase_items();
drop trigger if exists one_time_purchases_refresh_items_delete on billing.one_time_purchases;
create trigger one_time_purchases_refresh_items_delete
    after delete on billing.one_time_purchases
    referencing old table as old_rows
    for each statement execute function billing._tg_refresh_purchase_items();
drop trigger if exists item_histories_delete_points on billing.item_histories;
create trigger item_histories_delete_points
    after delete on billing.item_histories
    referencing old table as old_rows
    for each statement execute function billing._tg_delete_item_points();
