-- billing.cancel_subscription(p_tenancy_id, p_subscription_id, p_at_period_end, p_at): end
-- a test-mode or API-granted subscription.
--
-- At period end (the default): cancel_at_period_end is set and the subscription stays live
-- until current_period_end (whatever ends periods then ends it). Now: status canceled,
-- ended_at p_at, and its product line is free again. A subscription that already ended,
-- or is already set to end at its period end, is left as it is (no write), so a repeated
-- call is harmless. Stripe-backed subscriptions are cancelled in Stripe and arrive by the
-- Stripe sync; cancelling them here would be undone by the next sync.
-- Returns: when the subscription ends (or ended).
-- Errors: 22004 null argument; 22023 Stripe-backed, or p_at before the subscription
-- started; P0002 no such subscription in the tenancy.
-- Locks: the subscription row (FOR UPDATE).
create or replace function billing.cancel_subscription(p_tenancy_id uuid, p_subscription_id uuid,
                                                       p_at_period_end boolean default true,
                                                       p_at timestamptz default now())
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_subscription billing.subscriptions;
begin
    if p_tenancy_id is null or p_subscription_id is null or p_at_period_end is null or p_at is null then
        raise exception 'tenancy, subscription, at-period-end and time must not be null' using errcode = '22004';
    end if;
    select * into v_subscription from billing.subscriptions s
    where s.tenancy_id = p_tenancy_id and s.id = p_subscription_id
    for update;
    if not found then
        raise exception 'no subscription % in tenancy %', p_subscription_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_subscription.ended_at is not null then
        return v_subscription.ended_at;
    end if;
    if v_subscription.stripe_subscription_id is not null then
        raise exception 'subscription % is backed by Stripe subscription %: cancel it in Stripe', p_subscription_id,
            v_subscription.stripe_subscription_id using errcode = '22023';
    end if;
    if p_at_period_end then
        if not v_subscription.cancel_at_period_end then
            update billing.subscriptions s set cancel_at_period_end = true
            where s.tenancy_id = p_tenancy_id and s.id = p_subscription_id;
        end if;
        return v_subscription.current_period_end;
    end if;
    if p_at < v_subscription.started_at then
        raise exception 'subscription % started at %; it cannot end before, at %', p_subscription_id,
            v_subscription.started_at, p_at using errcode = '22023';
    end if;
    update billing.subscriptions s set status = 'canceled', ended_at = p_at
    where s.tenancy_id = p_tenancy_id and s.id = p_subscription_id;
    return p_at;
end;
$$;

comment on function billing.cancel_subscription(uuid, uuid, boolean, timestamptz) is
    'Cancel a test-mode or API subscription at its period end (default) or at p_at. Idempotent. Returns when it ends.';
