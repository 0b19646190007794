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
