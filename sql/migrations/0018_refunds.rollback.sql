-- Rollback of 0018: refunds, billing.refund, billing.owned_products and billing.switch_plan
-- go, the ledger's inputs and the subscriptions' ledger trigger get back their 0014
-- definitions (copied below), and quantities must be positive again (this fails while a purchase is refunded to quantity 0).
drop function if exists billing.transactions(uuid, text, text, timestamptz, timestamptz, integer, timestamptz, text);
drop function if exists billing.switch_plan(uuid, uuid, text, timestamptz);
drop function if exists billing.owned_products(uuid, text, text, timestamptz);
drop function if exists billing.refund(uuid, text, uuid, integer, numeric, text, timestamptz);
alter table billing.subscriptions drop constraint if exists subscriptions_quantity_check;
alter table billing.subscriptions add constraint subscriptions_quantity_check check (quantity > 0);
alter table billing.one_time_purchases drop constraint if exists one_time_purchases_quantity_check;
alter table billing.one_time_purchases add constraint one_time_purchases_quantity_check check (quantity > 0);
-- copied from sql/functions/billing._item_events.sql as of 0014_item_ledger
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

-- copied from sql/functions/billing._tg_refresh_subscription_items.sql as of 0014_item_ledger
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

drop table if exists billing.refunds;
