-- billing.grant_product(p_tenancy_id, p_customer_type, p_customer_id, p_product_id,
-- p_quantity, p_creation_source, p_at): give a customer a product without Stripe.
--
-- A product whose prices have an interval becomes a subscription (status active, the first
-- period from p_at to p_at + interval, see billing._recurring_interval); one without becomes
-- a one-time purchase at p_at. Either is pinned to the product's current version. A user or
-- team customer must exist in app.users / app.teams of the tenancy (its id is stored in
-- canonical uuid form); a custom customer is any non-empty string. Only stackable products
-- may be granted in a quantity above 1. Stripe-backed purchases come from the Stripe sync,
-- not from here.
-- Returns: the id of the new subscription or one-time purchase.
-- Errors: 22004 a null argument; 22023 bad customer type, quantity, creation source, a
-- customer of another type than the product's, or a quantity above 1 of a non-stackable
-- product; P0002 unknown product or customer; 23505 the customer already has a live
-- subscription in the product line (add-ons and stackable products excepted).
-- Locks: waits for a concurrent grant into the same customer and product line (unique
-- index billing.subscriptions_one_live_plan_idx) and fails if that one commits.
create or replace function billing.grant_product(p_tenancy_id uuid, p_customer_type text, p_customer_id text,
                                                 p_product_id text, p_quantity integer default 1,
                                                 p_creation_source text default 'api_grant',
                                                 p_at timestamptz default now())
returns uuid
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_version billing.product_versions;
    v_customer_id text := p_customer_id;
    v_interval interval;
    v_id uuid;
    v_constraint text;
    v_existing record;
begin
    if p_tenancy_id is null or p_customer_type is null or p_customer_id is null or p_product_id is null
       or p_at is null then
        raise exception 'tenancy, customer type, customer id, product and time must not be null'
            using errcode = '22004';
    end if;
    if p_customer_type not in ('user', 'team', 'custom') then
        raise exception 'customer type must be one of user, team, custom, got %', quote_literal(p_customer_type)
            using errcode = '22023';
    end if;
    if p_quantity is null or p_quantity < 1 then
        raise exception 'quantity must be at least 1, got %', coalesce(p_quantity::text, 'null') using errcode = '22023';
    end if;
    if p_creation_source is null or p_creation_source not in ('test_mode', 'api_grant') then
        raise exception 'creation source must be test_mode or api_grant, got % (Stripe purchases come from the Stripe sync)',
            coalesce(quote_literal(p_creation_source), 'null') using errcode = '22023';
    end if;

    select v.* into v_version
    from billing.products p join billing.product_versions v on v.id = p.current_version_id
    where p.tenancy_id = p_tenancy_id and p.product_id = p_product_id;
    if not found then
        raise exception 'no product "%" in tenancy %', p_product_id, p_tenancy_id using errcode = 'P0002';
    end if;
    if v_version.customer_type <> p_customer_type then
        raise exception 'product "%" is for % customers, not % %', p_product_id, v_version.customer_type,
            p_customer_type, p_customer_id using errcode = '22023';
    end if;
    if p_quantity > 1 and not v_version.stackable then
        raise exception 'product "%" is not stackable: quantity must be 1, got %', p_product_id, p_quantity
            using errcode = '22023';
    end if;
    if p_customer_type in ('user', 'team') then
        if p_customer_id !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' then
            raise exception '% id must be a uuid, got %', p_customer_type, quote_literal(p_customer_id)
                using errcode = '22023';
        end if;
        v_customer_id := p_customer_id::uuid::text;
        if (p_customer_type = 'team' and not exists (
                select 1 from app.teams t where t.tenancy_id = p_tenancy_id and t.id = v_customer_id::uuid))
           or (p_customer_type = 'user' and not exists (
                select 1 from app.users u where u.tenancy_id = p_tenancy_id and u.id = v_customer_id::uuid)) then
            raise exception 'no % % in tenancy %', p_customer_type, v_customer_id, p_tenancy_id using errcode = 'P0002';
        end if;
    elsif btrim(p_customer_id) = '' then
        raise exception 'custom customer id must not be empty' using errcode = '22023';
    end if;

    v_interval := billing._recurring_interval(v_version.content);
    if v_interval is null then
        insert into billing.one_time_purchases (tenancy_id, customer_type, customer_id, product_id,
                                                product_version_id, quantity, creation_source, purchased_at)
        values (p_tenancy_id, p_customer_type, v_customer_id, p_product_id, v_version.id, p_quantity,
                p_creation_source, p_at)
        returning id into v_id;
        return v_id;
    end if;

    begin
        insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id, product_version_id,
                                           product_line, is_add_on, stackable, status, quantity, started_at,
                                           current_period_start, current_period_end, creation_source)
        values (p_tenancy_id, p_customer_type, v_customer_id, p_product_id, v_version.id,
                v_version.product_line, v_version.is_add_on, v_version.stackable, 'active', p_quantity, p_at,
                p_at, p_at + v_interval, p_creation_source)
        returning id into v_id;
    exception when unique_violation then
        get stacked diagnostics v_constraint = constraint_name;
        if v_constraint <> 'subscriptions_one_live_plan_idx' then
            raise;
        end if;
        select s.id, s.product_id into v_existing from billing.subscriptions s
        where s.tenancy_id = p_tenancy_id and s.customer_type = p_customer_type and s.customer_id = v_customer_id
          and s.line_key = v_version.line_key and s.ended_at is null and not s.is_add_on and not s.stackable;
        raise exception '% % already has a live subscription in %: % of product "%"', p_customer_type, v_customer_id,
            case when v_version.product_line is null then format('product "%s"', p_product_id)
                 else format('product line "%s"', v_version.product_line) end,
            v_existing.id, v_existing.product_id using errcode = '23505';
    end;
    return v_id;
end;
$$;

comment on function billing.grant_product(uuid, text, text, text, integer, text, timestamptz) is
    'Grant a product (test mode or API): a subscription when its price has an interval, else a one-time purchase; pinned to the current version. Returns its id.';
