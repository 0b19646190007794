-- refunds and owned products (issue 11): billing.refunds records one refund per purchase
-- (money, quantity before and refunded); billing.refund lowers the purchase's own quantity
-- (so a later Stripe sync of that quantity changes nothing) without clawing back granted
-- items: the ledger's inputs (billing._item_events) split a purchase at its refund, grants
-- before it keep the old quantity. A purchase may now reach quantity 0 (refunded in full).
-- billing.owned_products answers what a customer owns at any time; billing.switch_plan
-- moves a live plan to another product of its line, forward only, and a move to another
-- product's version (a switch made in Stripe) is treated the same way by the ledger.
-- depends: 0017_metrics

create table if not exists billing.refunds (
    tenancy_id      uuid not null references app.tenancies (id) on delete cascade,
    id              bigint generated always as identity,
    purchase_kind   text not null,
    purchase_id     uuid not null,
    quantity        integer not null,
    quantity_before integer not null,
    amount          numeric not null,
    currency        text not null,
    refunded_at     timestamptz not null,
    created_at      timestamptz not null default now(),
    stripe_refund_id text,
    constraint refunds_pkey primary key (tenancy_id, id),
    constraint refunds_one_per_purchase_key unique (tenancy_id, purchase_kind, purchase_id),
    constraint refunds_purchase_kind_check check (purchase_kind in ('subscription', 'one_time_purchase')),
    constraint refunds_quantity_check check (quantity >= 0 and quantity_before >= 0),
    constraint refunds_amount_check check (amount >= 0),
    constraint refunds_currency_check check (currency ~ '^[A-Z]{3}$')
);
comment on table billing.refunds is
    'One refund per purchase: the money, the quantity refunded and the quantity before; written by billing.refund (and stripe_refund_id once, by pyglue.billing.refunds, when Stripe refunded the money). No foreign key to the purchase (two kinds).';
create unique index if not exists refunds_stripe_refund_id_idx on billing.refunds (stripe_refund_id)
    where stripe_refund_id is not null;

alter table billing.subscriptions drop constraint if exists subscriptions_quantity_check;
alter table billing.subscriptions add constraint subscriptions_quantity_check check (quantity >= 0);
alter table billing.one_time_purchases drop constraint if exists one_time_purchases_quantity_check;
alter table billing.one_time_purchases add constraint one_time_purchases_quantity_check check (quantity >= 0);

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
-- A move to a version of another product (a plan switched in Stripe, arriving by the sync)
-- is an end and a start, as billing.switch_plan makes them: the old product's purchase ends
-- at the move and the new one's starts there (grants from the move, repeats counted from
-- it), with no adjustment.
-- A refund (billing.refunds) splits the purchase too: before it (its time, or when it was
-- recorded if that is later: a refund dated back does not undo repeats already granted),
-- grants use the quantity the purchase had before the refund; from it on, the lowered one. It makes no adjustment:
-- what was granted stays granted (no clawback); only later repeats grant less.
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
    ), refunded as (
        select pu.*, greatest(f.refunded_at, f.created_at) as refunded_at, f.quantity_before
        from purchases pu
        left join billing.refunds f
          on f.tenancy_id = p_tenancy_id and f.purchase_kind = pu.kind and f.purchase_id = pu.id
    ), versions_over_time as (
        -- the version at the start (the first move's from-version), then each move's, and at
        -- a refund the version of that instant (a segment of its own: its quantity differs)
        select pu.kind, pu.id, pu.start_at, pu.end_at, pu.start_at as seg_start, 0::bigint as ord,
               false as is_refund,
               case when pu.start_at < pu.refunded_at then pu.quantity_before else pu.quantity end as seg_quantity,
               coalesce((select m.from_version_id from billing.subscription_moves m
                         where pu.kind = 'subscription' and m.tenancy_id = p_tenancy_id and m.subscription_id = pu.id
                         order by m.moved_at, m.id limit 1), pu.product_version_id) as version_id
        from refunded pu
        union all
        select pu.kind, pu.id, pu.start_at, pu.end_at, greatest(m.moved_at, pu.start_at), m.id, false,
               case when greatest(m.moved_at, pu.start_at) < pu.refunded_at then pu.quantity_before
                    else pu.quantity end,
               m.to_version_id
        from refunded pu
        join billing.subscription_moves m on m.tenancy_id = p_tenancy_id and m.subscription_id = pu.id
        where pu.kind = 'subscription'
        union all
        select pu.kind, pu.id, pu.start_at, pu.end_at, greatest(pu.refunded_at, pu.start_at), 9223372036854775807,
               true, pu.quantity,
               coalesce((select m.to_version_id from billing.subscription_moves m
                         where pu.kind = 'subscription' and m.tenancy_id = p_tenancy_id and m.subscription_id = pu.id
                           and greatest(m.moved_at, pu.start_at) <= greatest(pu.refunded_at, pu.start_at)
                         order by m.moved_at desc, m.id desc limit 1),
                        (select m.from_version_id from billing.subscription_moves m
                         where pu.kind = 'subscription' and m.tenancy_id = p_tenancy_id and m.subscription_id = pu.id
                         order by m.moved_at, m.id limit 1),
                        pu.product_version_id)
        from refunded pu
        where pu.refunded_at is not null
    ), segments as (
        select vt.kind, vt.id, vt.start_at, vt.end_at, vt.seg_start, vt.ord, vt.is_refund,
               vt.seg_quantity as quantity, lag(vt.seg_quantity) over w as prev_quantity,
               lead(vt.seg_start, 1, 'infinity') over w as seg_end,
               v.content -> 'included_items' -> p_item_id as item,
               lag(v.content -> 'included_items' -> p_item_id) over w as prev_item,
               coalesce(lag(v.product_id) over w <> v.product_id, false) as is_switch
        from versions_over_time vt
        join billing.product_versions v on v.id = vt.version_id
        window w as (partition by vt.kind, vt.id order by vt.seg_start, vt.ord)
    ), spans as (
        -- a move to another product's version (a plan switch made in Stripe) ends the purchase
        -- of the old product there and starts one of the new product: each span has its own
        -- start (repeats count from it) and end (when-purchase-expires lots expire at it)
        select sg.kind, sg.id, sg.seg_start, sg.ord, sg.is_refund, sg.is_switch, sg.quantity, sg.prev_quantity,
               sg.seg_end, sg.item, sg.prev_item,
               coalesce(max(case when sg.is_switch then sg.seg_start end) over upto, sg.start_at) as start_at,
               least(coalesce(min(case when sg.is_switch then sg.seg_start end) over later, 'infinity'), sg.end_at)
                   as end_at
        from segments sg
        window upto as (partition by sg.kind, sg.id order by sg.seg_start, sg.ord
                        rows between unbounded preceding and current row),
               later as (partition by sg.kind, sg.id order by sg.seg_start, sg.ord
                         rows between 1 following and unbounded following)
    ), rules as (
        select sg.*, least(sg.seg_end, sg.end_at) as stop_at,
               coalesce((sg.item ->> 'quantity')::bigint, 0) * sg.quantity as qty,
               coalesce((sg.prev_item ->> 'quantity')::bigint, 0) * sg.prev_quantity as prev_qty,
               billing._calendar_interval(coalesce(sg.item, sg.prev_item) -> 'repeat') as every,
               coalesce(coalesce(sg.item, sg.prev_item) ->> 'expires', 'never') as expires
        from spans sg
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
        where r.ord > 0 and not r.is_refund and not r.is_switch and r.qty <> r.prev_qty and r.seg_start < r.stop_at
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

-- copied from sql/functions/billing.refund.sql
-- billing.refund(p_tenancy_id, p_purchase_kind, p_purchase_id, p_quantity, p_amount,
-- p_currency, p_at): refund a purchase (a subscription or a one-time purchase), once.
--
-- Records the money (p_amount in p_currency, at p_at) in billing.refunds and lowers the
-- purchase's quantity by p_quantity, clamped at 0 (p_quantity 0 refunds money only). The
-- quantity is lowered in the purchase row itself, so a later Stripe sync that reports the
-- same lowered quantity changes nothing (the refund is never counted twice). Items the
-- purchase already granted stay granted (the ledger splits the purchase at the refund:
-- grants before it keep the old quantity, see billing._item_events); later repeats grant
-- the lowered quantity. A subscription refunded to quantity 0 is set to end at its period
-- end; a one-time purchase at 0 is no longer owned (billing.owned_products).
-- Returns: the refund's id.
-- Errors: 22004 null argument; 22023 unknown purchase kind, negative quantity or amount,
-- a currency that is not three capital letters, or p_at before the purchase; P0002 no such
-- purchase in the tenancy; 23505 the purchase was already refunded (nothing written).
-- Locks: the purchase row (FOR UPDATE), so two refunds of one purchase queue and the
-- second fails.
create or replace function billing.refund(p_tenancy_id uuid, p_purchase_kind text, p_purchase_id uuid,
                                          p_quantity integer, p_amount numeric, p_currency text default 'USD',
                                          p_at timestamptz default now())
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_quantity integer;
    v_started_at timestamptz;
    v_previous timestamptz;
    v_id bigint;
begin
    if p_tenancy_id is null or p_purchase_kind is null or p_purchase_id is null or p_quantity is null
       or p_amount is null or p_currency is null or p_at is null then
        raise exception 'tenancy, purchase kind, purchase, quantity, amount, currency and time must not be null'
            using errcode = '22004';
    end if;
    if p_purchase_kind not in ('subscription', 'one_time_purchase') then
        raise exception 'purchase kind must be subscription or one_time_purchase, got %', p_purchase_kind
            using errcode = '22023';
    end if;
    if p_quantity < 0 then
        raise exception 'refunded quantity must not be negative, got %', p_quantity using errcode = '22023';
    end if;
    if p_amount < 0 then
        raise exception 'refunded amount must not be negative, got %', p_amount using errcode = '22023';
    end if;
    if p_currency !~ '^[A-Z]{3}$' then
        raise exception 'currency must be an ISO 4217 code such as USD, got %', p_currency using errcode = '22023';
    end if;
    if p_purchase_kind = 'subscription' then
        select s.quantity, s.started_at into v_quantity, v_started_at from billing.subscriptions s
        where s.tenancy_id = p_tenancy_id and s.id = p_purchase_id
        for update;
    else
        select o.quantity, o.purchased_at into v_quantity, v_started_at from billing.one_time_purchases o
        where o.tenancy_id = p_tenancy_id and o.id = p_purchase_id
        for update;
    end if;
    if not found then
        raise exception 'no % % in tenancy %', replace(p_purchase_kind, '_', '-'), p_purchase_id, p_tenancy_id
            using errcode = 'P0002';
    end if;
    select f.refunded_at into v_previous from billing.refunds f
    where f.tenancy_id = p_tenancy_id and f.purchase_kind = p_purchase_kind and f.purchase_id = p_purchase_id;
    if found then
        raise exception '% % was already refunded (at %): one refund per purchase',
            replace(p_purchase_kind, '_', '-'), p_purchase_id, v_previous using errcode = '23505';
    end if;
    if p_at < v_started_at then
        raise exception 'refund time % is before the purchase (%)', p_at, v_started_at using errcode = '22023';
    end if;
    -- the refund row first: the purchase's UPDATE below refolds its item histories (the
    -- ledger triggers), and the fold reads the refund to keep what was granted before it
    insert into billing.refunds (tenancy_id, purchase_kind, purchase_id, quantity, quantity_before, amount,
                                 currency, refunded_at)
    values (p_tenancy_id, p_purchase_kind, p_purchase_id, p_quantity, v_quantity, p_amount, p_currency, p_at)
    returning id into v_id;
    if p_quantity > 0 and v_quantity > 0 then
        if p_purchase_kind = 'subscription' then
            update billing.subscriptions s
            set quantity = greatest(v_quantity - p_quantity, 0),
                cancel_at_period_end = s.cancel_at_period_end or v_quantity <= p_quantity
            where s.tenancy_id = p_tenancy_id and s.id = p_purchase_id;
        else
            update billing.one_time_purchases o set quantity = greatest(v_quantity - p_quantity, 0)
            where o.tenancy_id = p_tenancy_id and o.id = p_purchase_id;
        end if;
    end if;
    return v_id;
end;
$$;

comment on function billing.refund(uuid, text, uuid, integer, numeric, text, timestamptz) is
    'Refund a subscription or one-time purchase once: record the money, lower its quantity (clamped at 0) without clawing back granted items; at 0 a subscription ends at its period end. Returns the refund id.';

-- copied from sql/functions/billing.owned_products.sql
-- billing.owned_products(p_tenancy_id, p_customer_type, p_customer_id, p_at): what a
-- customer owns at p_at (now by default, or any time past or future).
--
-- A subscription counts from its start until it ends (ended_at, or its period end when set
-- to cancel then), with the version (and so the product: a plan switched in Stripe moves
-- the row to another product's version) it had at p_at (billing.subscription_moves); a one-time
-- purchase from its purchase until revoked. The quantity is the purchase's at p_at: before
-- a refund took effect (billing.refunds: its time, or when it was recorded if later) the
-- quantity it had before the refund, after it the lowered one. Purchases at quantity 0 are
-- not owned.
-- Returns: (product_id, product_version_id, quantity, purchase_kind, purchase_id), ordered
-- by product and purchase.
-- Errors: 22004 null argument.
create or replace function billing.owned_products(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                  p_at timestamptz default now())
returns table (product_id text, product_version_id text, quantity integer, purchase_kind text, purchase_id uuid)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_tenancy_id is null or p_customer_type is null or p_customer_id is null or p_at is null then
        raise exception 'tenancy, customer type, customer and time must not be null' using errcode = '22004';
    end if;
    return query
    with purchases as (
        select 'subscription'::text as kind, s.id, s.quantity,
               coalesce((select m.to_version_id from billing.subscription_moves m
                         where m.tenancy_id = s.tenancy_id and m.subscription_id = s.id and m.moved_at <= p_at
                         order by m.moved_at desc, m.id desc limit 1),
                        (select m.from_version_id from billing.subscription_moves m
                         where m.tenancy_id = s.tenancy_id and m.subscription_id = s.id
                         order by m.moved_at, m.id limit 1),
                        s.product_version_id) as version_id
        from billing.subscriptions s
        where s.tenancy_id = p_tenancy_id and s.customer_type = p_customer_type and s.customer_id = p_customer_id
          and s.started_at <= p_at
          and p_at < coalesce(s.ended_at, case when s.cancel_at_period_end then s.current_period_end end, 'infinity')
        union all
        select 'one_time_purchase', o.id, o.quantity, o.product_version_id
        from billing.one_time_purchases o
        where o.tenancy_id = p_tenancy_id and o.customer_type = p_customer_type and o.customer_id = p_customer_id
          and o.purchased_at <= p_at and p_at < coalesce(o.revoked_at, 'infinity')
    )
    select v.product_id, pu.version_id,
           case when greatest(f.refunded_at, f.created_at) > p_at then f.quantity_before else pu.quantity end,
           pu.kind, pu.id
    from purchases pu
    join billing.product_versions v on v.id = pu.version_id
    left join billing.refunds f on f.tenancy_id = p_tenancy_id and f.purchase_kind = pu.kind and f.purchase_id = pu.id
    where case when greatest(f.refunded_at, f.created_at) > p_at then f.quantity_before else pu.quantity end > 0
    order by 1, 5;
end;
$$;

comment on function billing.owned_products(uuid, text, text, timestamptz) is
    'What a customer owns at p_at: product, version, quantity and source purchase of each live subscription and unrevoked one-time purchase.';

-- copied from sql/functions/billing.switch_plan.sql
-- billing.switch_plan(p_tenancy_id, p_subscription_id, p_product_id, p_at): move a live
-- test-mode or API-granted subscription to another product of its product line, forward
-- only.
--
-- The old subscription ends at p_at (status canceled, ended_at p_at) and a new one to the
-- product's current version starts at p_at (billing.grant_product: same customer, quantity
-- and creation source, first period from p_at). The ledger applies its own rules from that
-- instant: the old plan's when-purchase-expires lots expire at p_at (what was used stays
-- used), its never lots stay, and the new plan grants its items at p_at; nothing before p_at
-- changes. Stripe-backed subscriptions change plan in Stripe (the subscription item's
-- price) and arrive by the Stripe sync.
-- Returns: the id of the new subscription.
-- Errors: 22004 null argument; 22023 Stripe-backed, already ended (or set to end before
-- p_at), p_at before the subscription started, the same product, or a product of another
-- product line or customer type; P0002 no such subscription or product in the tenancy.
-- Locks: the old subscription row (FOR UPDATE): two switches of one subscription queue and
-- the second finds it ended.
create or replace function billing.switch_plan(p_tenancy_id uuid, p_subscription_id uuid, p_product_id text,
                                               p_at timestamptz default now())
returns uuid
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old billing.subscriptions;
    v_line_key text;
begin
    if p_tenancy_id is null or p_subscription_id is null or p_product_id is null or p_at is null then
        raise exception 'tenancy, subscription, product and time must not be null' using errcode = '22004';
    end if;
    select * into v_old from billing.subscriptions s
    where s.tenancy_id = p_tenancy_id and s.id = p_subscription_id
    for update;
    if not found then
        raise exception 'no subscription % in tenancy %', p_subscription_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_old.stripe_subscription_id is not null then
        raise exception 'subscription % is backed by Stripe subscription %: change its plan in Stripe',
            p_subscription_id, v_old.stripe_subscription_id using errcode = '22023';
    end if;
    if v_old.ended_at is not null
       or (v_old.cancel_at_period_end and v_old.current_period_end <= p_at) then
        raise exception 'subscription % has ended (at %): only a live plan can be switched', p_subscription_id,
            coalesce(v_old.ended_at, v_old.current_period_end) using errcode = '22023';
    end if;
    if p_at < v_old.started_at then
        raise exception 'subscription % started at %; it cannot switch before, at %', p_subscription_id,
            v_old.started_at, p_at using errcode = '22023';
    end if;
    if p_product_id = v_old.product_id then
        raise exception 'subscription % is already on product "%"', p_subscription_id, p_product_id
            using errcode = '22023';
    end if;
    select v.line_key into v_line_key
    from billing.products p join billing.product_versions v on v.id = p.current_version_id
    where p.tenancy_id = p_tenancy_id and p.product_id = p_product_id;
    if not found then
        raise exception 'no product "%" in tenancy %', p_product_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_line_key <> v_old.line_key then
        raise exception 'product "%" is not in the product line of subscription % (%): a switch stays in its line',
            p_product_id, p_subscription_id, coalesce(v_old.product_line, 'none') using errcode = '22023';
    end if;
    update billing.subscriptions s set ended_at = p_at, status = 'canceled'
    where s.tenancy_id = p_tenancy_id and s.id = p_subscription_id;
    return billing.grant_product(p_tenancy_id, v_old.customer_type, v_old.customer_id, p_product_id, v_old.quantity,
                                 v_old.creation_source, p_at);
end;
$$;

comment on function billing.switch_plan(uuid, uuid, text, timestamptz) is
    'Move a live subscription to another product of its line at p_at: the old one ends then, a new one starts then; forward-only. Returns the new subscription id.';

-- copied from sql/functions/billing.transactions.sql
-- billing.transactions(p_tenancy_id, p_customer_type, p_customer_id, p_from, p_to,
-- p_limit, p_before_at, p_before_id): the money-and-items history of a customer (or of
-- every customer of the tenancy when p_customer_type and p_customer_id are null), newest
-- first, one row per entry:
--   purchase      a subscription's start or a one-time purchase (quantity at the time);
--   renewal       each later billing period of a subscription that started;
--   plan_switch   a subscription that started when the customer's plan of the same product
--                 line ended (billing.switch_plan): one entry, not a cancellation and a
--                 purchase; or a move of a subscription to another product's version (a
--                 switch made in Stripe);
--   cancellation  a subscription's end (or its period end when set to cancel then), a
--                 one-time purchase's revocation;
--   refund        billing.refunds, with the money;
--   item_change   a manual change (billing.item_quantity_changes), or a purchase's
--                 removal of items (a version change to fewer);
--   item_grant    items a purchase granted (its included items, repeats, adjustments);
--   item_expiry   what expired of a customer's items at an instant (from the fold: the
--                 balance before, plus what changed, minus the balance after).
-- The product of an entry is that of its version at the time.
-- Entries between p_from (inclusive) and p_to (exclusive; now() when null). Amounts: the
-- money of refunds; purchases and renewals carry no amount (API grants move no money, and
-- Stripe's invoices are not copied here).
-- Pages: at most p_limit rows (1 to 1000); the next page passes the last row's at and id as
-- p_before_at and p_before_id (entries strictly after it in the order at desc, id desc), so
-- pages have no gaps or duplicates. Ids are stable strings naming the source.
-- Errors: 22004 null tenancy; 22023 a customer type without an id (or the reverse), a limit
-- out of range, or p_before_at without p_before_id.
create or replace function billing.transactions(p_tenancy_id uuid, p_customer_type text default null,
                                                p_customer_id text default null, p_from timestamptz default null,
                                                p_to timestamptz default null, p_limit integer default 100,
                                                p_before_at timestamptz default null, p_before_id text default null)
returns table (id text, at timestamptz, kind text, customer_type text, customer_id text, product_id text,
               product_version_id text, item_id text, quantity bigint, amount numeric, currency text,
               source_kind text, source_id text)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    v_from timestamptz := coalesce(p_from, '-infinity');
    v_to timestamptz := coalesce(p_to, now());
begin
    if p_tenancy_id is null then
        raise exception 'tenancy must not be null' using errcode = '22004';
    end if;
    if (p_customer_type is null) <> (p_customer_id is null) then
        raise exception 'customer type and customer id go together, got % and %', coalesce(p_customer_type, 'null'),
            coalesce(p_customer_id, 'null') using errcode = '22023';
    end if;
    if p_limit is null or p_limit < 1 or p_limit > 1000 then
        raise exception 'limit must be from 1 to 1000, got %', coalesce(p_limit::text, 'null') using errcode = '22023';
    end if;
    if (p_before_at is null) <> (p_before_id is null) then
        raise exception 'p_before_at and p_before_id go together (the last row of the previous page)'
            using errcode = '22023';
    end if;
    return query
    with subs as (
        select s.*, f.quantity_before, greatest(f.refunded_at, f.created_at) as refund_effective_at,
               billing._recurring_interval(v.content) as every,
               coalesce((select m.from_version_id from billing.subscription_moves m
                         where m.tenancy_id = s.tenancy_id and m.subscription_id = s.id
                         order by m.moved_at, m.id limit 1), s.product_version_id) as first_version_id,
               coalesce(s.ended_at, case when s.cancel_at_period_end then s.current_period_end end) as end_at,
               exists (select 1 from billing.subscriptions o
                       where o.tenancy_id = s.tenancy_id and o.customer_type = s.customer_type
                         and o.customer_id = s.customer_id and o.line_key = s.line_key and o.id <> s.id
                         and o.ended_at = s.started_at) as is_switch
        from billing.subscriptions s
        join billing.product_versions v on v.id = s.product_version_id
        left join billing.refunds f on f.tenancy_id = s.tenancy_id and f.purchase_kind = 'subscription'
                                    and f.purchase_id = s.id
        where s.tenancy_id = p_tenancy_id
          and (p_customer_type is null or (s.customer_type = p_customer_type and s.customer_id = p_customer_id))
    ), switched_away as (
        select o.id from subs o
        join subs n on n.is_switch and n.customer_type = o.customer_type and n.customer_id = o.customer_id
                   and n.line_key = o.line_key and n.started_at = o.ended_at and n.id <> o.id
    ), purchases (id, at, kind, customer_type, customer_id, product_id, version_id, item_id, quantity, amount, currency,
                   source_kind, source_id) as (
        select case when s.is_switch then 'plan_switch:' || s.id else 'purchase:subscription:' || s.id end as id,
               s.started_at as at, case when s.is_switch then 'plan_switch' else 'purchase' end as kind,
               s.customer_type, s.customer_id, s.product_id, s.first_version_id as version_id, null::text as item_id,
               (case when s.refund_effective_at > s.started_at then s.quantity_before else s.quantity end)::bigint
                   as quantity,
               null::numeric as amount, null::text as currency, 'subscription'::text as source_kind,
               s.id::text as source_id
        from subs s
        union all
        select 'renewal:' || s.id || ':' || lpad(k::text, 6, '0'), s.started_at + k * s.every, 'renewal',
               s.customer_type, s.customer_id, s.product_id,
               coalesce((select m.to_version_id from billing.subscription_moves m
                         where m.tenancy_id = s.tenancy_id and m.subscription_id = s.id
                           and m.moved_at <= s.started_at + k * s.every
                         order by m.moved_at desc, m.id desc limit 1), s.first_version_id),
               null, (case when s.refund_effective_at > s.started_at + k * s.every then s.quantity_before
                           else s.quantity end)::bigint,
               null, null, 'subscription', s.id::text
        from subs s
        cross join lateral generate_series(1, case when s.every is null then 0 else
            floor(extract(epoch from least(coalesce(s.end_at, 'infinity'), v_to) - s.started_at)
                  / extract(epoch from justify_days(s.every)) * 31 / 28)::integer + 1 end) k
        where s.started_at + k * s.every < least(coalesce(s.end_at, 'infinity'), v_to)
        union all
        select 'plan_switch:move:' || lpad(m.id::text, 19, '0'), m.moved_at, 'plan_switch', s.customer_type,
               s.customer_id, b.product_id, m.to_version_id, null,
               (case when s.refund_effective_at > m.moved_at then s.quantity_before else s.quantity end)::bigint,
               null, null, 'subscription', s.id::text
        from subs s
        join billing.subscription_moves m on m.tenancy_id = p_tenancy_id and m.subscription_id = s.id
        join billing.product_versions a on a.id = m.from_version_id
        join billing.product_versions b on b.id = m.to_version_id
        where a.product_id <> b.product_id
        union all
        select 'cancellation:subscription:' || s.id, s.end_at, 'cancellation', s.customer_type, s.customer_id,
               s.product_id, s.product_version_id, null, null, null, null, 'subscription', s.id::text
        from subs s
        where s.end_at is not null and s.id not in (select w.id from switched_away w)
        union all
        select 'purchase:one_time_purchase:' || o.id, o.purchased_at, 'purchase', o.customer_type, o.customer_id,
               o.product_id, o.product_version_id, null,
               (case when f.id is not null then f.quantity_before else o.quantity end)::bigint, null, null,
               'one_time_purchase', o.id::text
        from billing.one_time_purchases o
        left join billing.refunds f on f.tenancy_id = o.tenancy_id and f.purchase_kind = 'one_time_purchase'
                                    and f.purchase_id = o.id
        where o.tenancy_id = p_tenancy_id
          and (p_customer_type is null or (o.customer_type = p_customer_type and o.customer_id = p_customer_id))
        union all
        select 'cancellation:one_time_purchase:' || o.id, o.revoked_at, 'cancellation', o.customer_type,
               o.customer_id, o.product_id, o.product_version_id, null, null, null, null, 'one_time_purchase',
               o.id::text
        from billing.one_time_purchases o
        where o.tenancy_id = p_tenancy_id and o.revoked_at is not null
          and (p_customer_type is null or (o.customer_type = p_customer_type and o.customer_id = p_customer_id))
    ), refunds (id, at, kind, customer_type, customer_id, product_id, version_id, item_id, quantity, amount, currency,
                   source_kind, source_id) as (
        select 'refund:' || lpad(f.id::text, 19, '0') as id, f.refunded_at as at, 'refund'::text as kind,
               coalesce(s.customer_type, o.customer_type) as customer_type,
               coalesce(s.customer_id, o.customer_id) as customer_id, coalesce(s.product_id, o.product_id),
               coalesce(s.product_version_id, o.product_version_id), null::text, f.quantity::bigint, f.amount,
               f.currency, f.purchase_kind, f.purchase_id::text
        from billing.refunds f
        left join billing.subscriptions s on f.purchase_kind = 'subscription' and s.tenancy_id = f.tenancy_id
                                          and s.id = f.purchase_id
        left join billing.one_time_purchases o on f.purchase_kind = 'one_time_purchase'
                                               and o.tenancy_id = f.tenancy_id and o.id = f.purchase_id
        where f.tenancy_id = p_tenancy_id
    ), histories as (
        -- every item history of the customers: items changed by hand or included in a purchase
        select distinct c.customer_type, c.customer_id, c.item_id
        from billing.item_quantity_changes c
        where c.tenancy_id = p_tenancy_id
          and (p_customer_type is null or (c.customer_type = p_customer_type and c.customer_id = p_customer_id))
        union
        select pu.customer_type, pu.customer_id, i.item_id
        from (select s.customer_type, s.customer_id, s.product_version_id as version_id from subs s
              union select s.customer_type, s.customer_id, m.from_version_id from subs s
                   join billing.subscription_moves m on m.tenancy_id = p_tenancy_id and m.subscription_id = s.id
              union select o.customer_type, o.customer_id, o.product_version_id from billing.one_time_purchases o
                   where o.tenancy_id = p_tenancy_id
                     and (p_customer_type is null or (o.customer_type = p_customer_type
                                                      and o.customer_id = p_customer_id))) pu
        join billing.product_versions v on v.id = pu.version_id
        cross join lateral jsonb_object_keys(coalesce(v.content -> 'included_items', '{}')) i (item_id)
    ), item_events as (
        select h.customer_type, h.customer_id, h.item_id, e.*,
               row_number() over (partition by h.customer_type, h.customer_id, h.item_id, e.source_kind, e.source_id,
                                               e.at order by e.delta, e.expires_at) as n
        from histories h
        cross join lateral billing._item_events(p_tenancy_id, h.customer_type, h.customer_id, h.item_id,
                                                '-infinity', v_to) e
    ), items (id, at, kind, customer_type, customer_id, product_id, version_id, item_id, quantity, amount, currency,
                   source_kind, source_id) as (
        select case when e.source_kind = 'item_change' then 'item_change:' || lpad(e.source_id, 19, '0')
                    else 'item_grant:' || e.source_kind || ':' || e.source_id || ':' || e.item_id || ':'
                         || to_char(e.at at time zone 'UTC', 'YYYYMMDDHH24MISSUS') || ':' || e.n end as id,
               e.at, case when e.source_kind = 'item_change' or e.delta < 0 then 'item_change' else 'item_grant' end,
               e.customer_type, e.customer_id, null::text, null::text, e.item_id, e.delta, null::numeric,
               null::text, e.source_kind, e.source_id
        from item_events e
        where e.delta < 0 or e.expires_at > e.at  -- a grant that expires at once is never granted
    ), expiries (id, at, kind, customer_type, customer_id, product_id, version_id, item_id, quantity, amount, currency,
                   source_kind, source_id) as (
        -- what expired at an instant: balance before + what changed then - balance after
        select 'item_expiry:' || h.customer_type || ':' || h.customer_id || ':' || h.item_id || ':'
                   || to_char(p.at at time zone 'UTC', 'YYYYMMDDHH24MISSUS') as id,
               p.at, 'item_expiry'::text, h.customer_type, h.customer_id, null::text, null::text, h.item_id,
               -(p.before + coalesce((select sum(e.delta) from item_events e
                                      where e.customer_type = h.customer_type and e.customer_id = h.customer_id
                                        and e.item_id = h.item_id and e.at = p.at
                                        and (e.delta < 0 or e.expires_at > e.at)), 0) - p.balance)::bigint,
               null::numeric, null::text, 'item_history'::text,
               h.customer_type || ':' || h.customer_id || ':' || h.item_id
        from histories h
        cross join lateral (
            select x.first_at as at, x.balances[1] as balance,
                   coalesce(lag(x.balances[1]) over (order by x.first_at), 0) as before
            from billing._item_points(p_tenancy_id, h.customer_type, h.customer_id, h.item_id, '-infinity', v_to, 1) x
        ) p
    ), entries as (
        select * from purchases
        union all select * from refunds
        union all select * from items
        union all select * from expiries where expiries.quantity < 0
    )
    select en.id, en.at, en.kind, en.customer_type, en.customer_id,
           coalesce((select v.product_id from billing.product_versions v where v.id = en.version_id), en.product_id),
           en.version_id, en.item_id,
           en.quantity, en.amount, en.currency, en.source_kind, en.source_id
    from entries en
    where en.at >= v_from and en.at < v_to
      and (p_before_at is null or (en.at, en.id) < (p_before_at, p_before_id))
      and (p_customer_type is null or (en.customer_type = p_customer_type and en.customer_id = p_customer_id))
    order by en.at desc, en.id desc
    limit p_limit;
end;
$$;

comment on function billing.transactions(uuid, text, text, timestamptz, timestamptz, integer, timestamptz, text) is
    'The money-and-items history of a customer (or a tenancy): purchases, renewals, plan switches, cancellations, refunds, item changes, grants and expiries, newest first, keyset pages.';

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
        -- the version moves that change included items, or the product (a switch: the ledger
        -- ends the old purchase and starts a new one there), as 'from to' (few: looked up
        -- once per pair, not per row)
        select coalesce(array_agg(p.from_id || ' ' || p.to_id), '{}') into v_moves
        from (select distinct o.product_version_id as from_id, n.product_version_id as to_id
              from old_rows o join new_rows n on n.tenancy_id = o.tenancy_id and n.id = o.id
              where o.product_version_id <> n.product_version_id) p
        join billing.product_versions a on a.id = p.from_id
        join billing.product_versions b on b.id = p.to_id
        where a.content -> 'included_items' is distinct from b.content -> 'included_items'
           or a.product_id <> b.product_id;
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
                         -- a version change alone changes nothing before the move: from there; a
                         -- change of product ends the old purchase at the move, so the expiries of
                         -- what it granted before change too: from the start
                         case when (o.customer_type, o.customer_id, o.started_at, o.ended_at, o.cancel_at_period_end,
                                    o.current_period_end, o.quantity, o.product_id)
                                   is not distinct from (n.customer_type, n.customer_id, n.started_at, n.ended_at,
                                                         n.cancel_at_period_end, n.current_period_end, n.quantity,
                                                         n.product_id)
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
