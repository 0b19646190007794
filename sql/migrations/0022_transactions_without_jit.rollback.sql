-- Rollback of 0022: billing.transactions as of 0018 (no jit setting of its own).

-- copied from sql/functions/billing.transactions.sql as of 0018_refunds
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
