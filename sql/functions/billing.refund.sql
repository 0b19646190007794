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
