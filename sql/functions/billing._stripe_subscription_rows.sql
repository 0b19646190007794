-- billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at): a batch of Stripe
-- subscriptions (validated by billing.upsert_stripe_subscriptions) as the rows of
-- billing.subscriptions they stand for, with the id of the existing row (null: new).
--
-- p_rows: a JSON array of {stripe_subscription_id, customer_type, customer_id, product_id,
-- product_version_id (null: not named), status, quantity, started_at, current_period_start,
-- current_period_end, cancel_at_period_end, ended_at, canceled_at}, times in Unix seconds as
-- Stripe gives them. User and team ids come out in canonical uuid form. ended_at is null
-- unless the status is canceled or incomplete_expired, and then Stripe's ended_at (else
-- canceled_at, else the period start), never before the start.
-- The version, for a subscription of the product it already has: its own while an outbox
-- row is writing that version into Stripe (undelivered, or delivered at or after p_read_at,
-- when the Stripe data may have been read before the write); else the one the metadata
-- names; else its own. For a new subscription, or one whose product changed: the version
-- named, else the product's current version. Rows whose product or version does not exist
-- are left out (the caller has refused them already).
-- Reads billing.subscriptions, billing.stripe_outbox, billing.products and product_versions;
-- takes no locks.
create or replace function billing._stripe_subscription_rows(p_tenancy_id uuid, p_rows jsonb, p_read_at timestamptz)
returns table (subscription_id uuid, stripe_subscription_id text, customer_type text, customer_id text,
               product_id text, product_version_id text, product_line text, is_add_on boolean, stackable boolean,
               line_key text, status text, quantity integer, started_at timestamptz,
               current_period_start timestamptz, current_period_end timestamptz, cancel_at_period_end boolean,
               ended_at timestamptz)
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select s.id, r.stripe_subscription_id, r.customer_type,
           case when r.customer_type in ('user', 'team') then r.customer_id::uuid::text else r.customer_id end,
           r.product_id, v.id, v.product_line, v.is_add_on, v.stackable, v.line_key, r.status, r.quantity,
           to_timestamp(r.started_at), to_timestamp(r.current_period_start), to_timestamp(r.current_period_end),
           coalesce(r.cancel_at_period_end, false),
           case when r.status in ('canceled', 'incomplete_expired') then
               greatest(to_timestamp(r.started_at),
                        to_timestamp(coalesce(r.ended_at, r.canceled_at, r.current_period_start)))
           end
    from jsonb_to_recordset(p_rows) as r (stripe_subscription_id text, customer_type text, customer_id text,
                                          product_id text, product_version_id text, status text, quantity integer,
                                          started_at double precision, current_period_start double precision,
                                          current_period_end double precision, cancel_at_period_end boolean,
                                          ended_at double precision, canceled_at double precision)
    join billing.products p on p.tenancy_id = p_tenancy_id and p.product_id = r.product_id
    left join billing.subscriptions s
        on s.tenancy_id = p_tenancy_id and s.stripe_subscription_id = r.stripe_subscription_id
    join billing.product_versions v
        on v.tenancy_id = p_tenancy_id and v.product_id = r.product_id
       and v.id = case
               when s.product_id is distinct from r.product_id then coalesce(r.product_version_id, p.current_version_id)
               when exists (select 1 from billing.stripe_outbox o
                            where o.tenancy_id = p_tenancy_id and o.subscription_id = s.id
                              and (o.delivered_at is null or o.delivered_at >= p_read_at)) then s.product_version_id
               else coalesce(r.product_version_id, s.product_version_id)
           end;
$$;

comment on function billing._stripe_subscription_rows(uuid, jsonb, timestamptz) is
    'A validated batch of Stripe subscriptions as billing.subscriptions rows (existing id or null, resolved version).';
