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
