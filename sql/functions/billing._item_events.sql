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
