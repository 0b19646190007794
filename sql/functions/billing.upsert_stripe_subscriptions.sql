-- billing.upsert_stripe_subscriptions(p_tenancy_id, p_rows, p_read_at): write a batch of a
-- tenancy's Stripe subscriptions into billing.subscriptions, keyed by Stripe id.
--
-- p_rows: a JSON array, one object per Stripe subscription (see
-- billing._stripe_subscription_rows for the fields; pyglue.billing.stripe builds them from
-- the Stripe objects and their metadata). p_read_at: when the caller began reading Stripe
-- (null: unknown); an outbox write delivered since then may not be in the data read.
-- New Stripe ids become subscriptions with creation_source 'stripe'; existing ones get the
-- status, quantity, periods, cancel-at-period-end, ended time, customer, product and
-- version Stripe has, and only when one of them differs (IS DISTINCT FROM), so a re-sync of
-- unchanged Stripe state writes no row version. The version is the one the metadata names;
-- without one an existing subscription keeps its own and a new one gets the product's
-- current version; while regen's new version is on its way into the Stripe metadata
-- (billing.stripe_outbox) the subscription keeps it, so a sync never moves it back. A
-- version change made here is logged in billing.subscription_moves like regen's.
-- One live plan per customer and product line: a Stripe subscription that becomes live in
-- a line where the customer has a live test-mode or API-granted plan ends that plan (status
-- canceled, ended at the Stripe subscription's start, not before the plan's own start, not
-- after now()); one where the customer has another live Stripe subscription is refused.
-- Returns: rows of billing.subscriptions inserted or updated (ended plans included).
-- Errors (nothing written): 22004 null tenancy; P0002 unknown tenancy; 22023 a batch that is
-- not an array, a malformed row (naming the Stripe id, field and value), a Stripe id given
-- twice, a product that does not exist in the tenancy, a version that is not one of the
-- product's, a customer type other than the product's; 23505 two live Stripe
-- subscriptions of one customer in one product line.
-- Locks: the existing rows that change (FOR NO KEY UPDATE: it waits for a regen moving
-- them, and computes the changes after the wait) and the non-Stripe plans it ends; an
-- insert racing another sync of the same Stripe id waits for it and then skips the row.
-- (No lock per tenancy: an advisory key anyone may take, a mapping fetch included, could
-- stall every sync.) A re-sync that changes nothing takes no row lock and writes nothing.
create or replace function billing.upsert_stripe_subscriptions(p_tenancy_id uuid, p_rows jsonb,
                                                               p_read_at timestamptz default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_bad record;
    v_pass boolean;
    v_count bigint;
    v_total bigint := 0;
    v_detail text;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if not exists (select 1 from app.tenancies t where t.id = p_tenancy_id) then
        raise exception 'no tenancy %', p_tenancy_id using errcode = 'P0002';
    end if;
    if jsonb_typeof(p_rows) is distinct from 'array' then
        raise exception 'Stripe subscriptions must be a JSON array, got %', coalesce(left(p_rows::text, 200), 'null')
            using errcode = '22023';
    end if;

    -- the shape of every row: the first fault, naming the row's Stripe id, the field and its value
    select e.ordinality, e.value ->> 'stripe_subscription_id' as stripe_id, f.problem into v_bad
    from jsonb_array_elements(p_rows) with ordinality as e
    cross join lateral (select case
        when jsonb_typeof(e.value) <> 'object' then format('must be an object, got %s', left(e.value::text, 200))
        when coalesce(e.value ->> 'stripe_subscription_id', '') !~ '^sub_[A-Za-z0-9_]{1,250}$'
            then format('stripe_subscription_id must be a Stripe subscription id (sub_...), got %s',
                        coalesce(e.value -> 'stripe_subscription_id', 'null'))
        when coalesce(e.value ->> 'customer_type', '') not in ('user', 'team', 'custom')
            then format('customer_type must be one of user, team, custom, got %s',
                        coalesce(e.value -> 'customer_type', 'null'))
        when jsonb_typeof(e.value -> 'customer_id') is distinct from 'string' or btrim(e.value ->> 'customer_id') = ''
            then format('customer_id must be a non-empty string, got %s', coalesce(e.value -> 'customer_id', 'null'))
        when e.value ->> 'customer_type' in ('user', 'team')
             and e.value ->> 'customer_id' !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
            then format('%s id must be a uuid, got %s', e.value ->> 'customer_type', e.value -> 'customer_id')
        when jsonb_typeof(e.value -> 'product_id') is distinct from 'string' or e.value ->> 'product_id' = ''
            then format('product_id must be a non-empty string, got %s', coalesce(e.value -> 'product_id', 'null'))
        when jsonb_typeof(e.value -> 'product_version_id') not in ('string', 'null')
            then format('product_version_id must be a string or null, got %s', e.value -> 'product_version_id')
        when coalesce(e.value ->> 'status', '') not in ('incomplete', 'incomplete_expired', 'trialing', 'active',
                                                        'past_due', 'canceled', 'unpaid', 'paused')
            then format('status %s is not a Stripe subscription status', coalesce(e.value -> 'status', 'null'))
        when jsonb_typeof(e.value -> 'quantity') is distinct from 'number'
             or (e.value -> 'quantity')::text !~ '^[1-9][0-9]{0,8}$'
            then format('quantity must be an integer from 1 to 999999999, got %s', coalesce(e.value -> 'quantity', 'null'))
        when jsonb_typeof(e.value -> 'started_at') is distinct from 'number'
            then format('started_at must be Unix seconds, got %s', coalesce(e.value -> 'started_at', 'null'))
        when jsonb_typeof(e.value -> 'current_period_start') is distinct from 'number'
            then format('current_period_start must be Unix seconds, got %s',
                        coalesce(e.value -> 'current_period_start', 'null'))
        when jsonb_typeof(e.value -> 'current_period_end') is distinct from 'number'
            then format('current_period_end must be Unix seconds, got %s',
                        coalesce(e.value -> 'current_period_end', 'null'))
        when (e.value ->> 'current_period_end')::numeric <= (e.value ->> 'current_period_start')::numeric
            then format('current_period_end %s is not after current_period_start %s',
                        e.value -> 'current_period_end', e.value -> 'current_period_start')
        when jsonb_typeof(e.value -> 'cancel_at_period_end') not in ('boolean', 'null')
            then format('cancel_at_period_end must be true or false, got %s', e.value -> 'cancel_at_period_end')
        when jsonb_typeof(e.value -> 'ended_at') not in ('number', 'null')
            then format('ended_at must be Unix seconds or null, got %s', e.value -> 'ended_at')
        when jsonb_typeof(e.value -> 'canceled_at') not in ('number', 'null')
            then format('canceled_at must be Unix seconds or null, got %s', e.value -> 'canceled_at')
        end as problem) as f
    where f.problem is not null
    order by e.ordinality
    limit 1;
    if found then
        raise exception 'Stripe subscription % (row %): %', coalesce(v_bad.stripe_id, '?'), v_bad.ordinality,
            v_bad.problem using errcode = '22023';
    end if;

    select r.stripe_subscription_id into v_bad
    from jsonb_to_recordset(p_rows) as r (stripe_subscription_id text)
    group by r.stripe_subscription_id having count(*) > 1
    order by 1 limit 1;
    if found then
        raise exception 'Stripe subscription % is in the batch more than once', v_bad.stripe_subscription_id
            using errcode = '22023';
    end if;

    -- products, versions and customer types, against the tenancy's catalog
    select r.stripe_subscription_id, r.product_id, r.product_version_id, r.customer_type, r.customer_id,
           p.product_id is null as no_product, cv.customer_type as product_customer_type,
           r.product_version_id is not null and v.id is null as no_version
    into v_bad
    from jsonb_to_recordset(p_rows) as r (stripe_subscription_id text, product_id text, product_version_id text,
                                          customer_type text, customer_id text)
    left join billing.products p on p.tenancy_id = p_tenancy_id and p.product_id = r.product_id
    left join billing.product_versions cv on cv.id = p.current_version_id
    left join billing.product_versions v
        on v.id = r.product_version_id and v.tenancy_id = p_tenancy_id and v.product_id = r.product_id
    where p.product_id is null or (r.product_version_id is not null and v.id is null)
       or cv.customer_type <> r.customer_type
    order by r.stripe_subscription_id
    limit 1;
    if found then
        if v_bad.no_product then
            raise exception 'Stripe subscription % names product "%", which does not exist in tenancy %',
                v_bad.stripe_subscription_id, v_bad.product_id, p_tenancy_id using errcode = '22023';
        elsif v_bad.no_version then
            raise exception 'Stripe subscription % names product version %, which is not a version of product "%" in tenancy %',
                v_bad.stripe_subscription_id, v_bad.product_version_id, v_bad.product_id, p_tenancy_id
                using errcode = '22023';
        end if;
        raise exception 'Stripe subscription %: product "%" is for % customers, not % %', v_bad.stripe_subscription_id,
            v_bad.product_id, v_bad.product_customer_type, v_bad.customer_type, v_bad.customer_id
            using errcode = '22023';
    end if;

    -- one live plan per customer and line, judged on the batch as it will be written: two
    -- live Stripe subscriptions (both in the batch, or one already stored) are refused
    with r as (
        select * from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) x
        where x.ended_at is null and not x.is_add_on and not x.stackable
    )
    select a.stripe_subscription_id as first_id, b.stripe_id as second_id, a.customer_type, a.customer_id, a.line_key
    into v_bad
    from r a
    join lateral (
        select r2.stripe_subscription_id as stripe_id from r r2
        where r2.customer_type = a.customer_type and r2.customer_id = a.customer_id and r2.line_key = a.line_key
          and r2.stripe_subscription_id > a.stripe_subscription_id
        union all
        select s.stripe_subscription_id from billing.subscriptions s
        where s.tenancy_id = p_tenancy_id and s.customer_type = a.customer_type and s.customer_id = a.customer_id
          and s.line_key = a.line_key and s.ended_at is null and not s.is_add_on and not s.stackable
          and s.stripe_subscription_id is not null and s.stripe_subscription_id <> a.stripe_subscription_id
          and s.stripe_subscription_id not in (select x.stripe_subscription_id
                                              from jsonb_to_recordset(p_rows) as x (stripe_subscription_id text))
    ) b on true
    order by a.stripe_subscription_id
    limit 1;
    if found then
        raise exception 'Stripe subscriptions % and % would both be live plans of % % in %', v_bad.first_id,
            v_bad.second_id, v_bad.customer_type, v_bad.customer_id,
            case when v_bad.line_key like 'line:%' then format('product line "%s"', substr(v_bad.line_key, 6))
                 else format('product "%s"', substr(v_bad.line_key, 9)) end
            using errcode = '23505';
    end if;

    begin
        -- end the test-mode / API plans that a live Stripe subscription replaces
        update billing.subscriptions s
        set status = 'canceled', ended_at = greatest(s.started_at, least(r.started_at, now()))
        from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
        where s.tenancy_id = p_tenancy_id and s.customer_type = r.customer_type and s.customer_id = r.customer_id
          and s.line_key = r.line_key and s.ended_at is null and not s.is_add_on and not s.stackable
          and s.stripe_subscription_id is null
          and r.ended_at is null and not r.is_add_on and not r.stackable;
        get diagnostics v_count = row_count;
        v_total := v_total + v_count;

        -- lock the existing rows that change; a row a concurrent regen is moving is waited for,
        -- and the statements below (a new snapshot) see its move and its outbox row
        perform 1
        from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
        join billing.subscriptions s on s.tenancy_id = p_tenancy_id and s.id = r.subscription_id
        where (s.customer_type, s.customer_id, s.product_id, s.product_version_id, s.status, s.quantity, s.started_at,
               s.current_period_start, s.current_period_end, s.cancel_at_period_end, s.ended_at)
              is distinct from
              (r.customer_type, r.customer_id, r.product_id, r.product_version_id, r.status, r.quantity, r.started_at,
               r.current_period_start, r.current_period_end, r.cancel_at_period_end, r.ended_at)
        for no key update of s;

        -- update what differs, the rows that end first (so a plan ending in Stripe frees its
        -- line before another one moves into it), logging version changes
        foreach v_pass in array array[true, false] loop
            with changed as (
                select r.*, s.product_version_id as from_version_id
                from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
                join billing.subscriptions s on s.tenancy_id = p_tenancy_id and s.id = r.subscription_id
                where (r.ended_at is not null) = v_pass
                  and (s.customer_type, s.customer_id, s.product_id, s.product_version_id, s.status, s.quantity,
                       s.started_at, s.current_period_start, s.current_period_end, s.cancel_at_period_end, s.ended_at)
                      is distinct from
                      (r.customer_type, r.customer_id, r.product_id, r.product_version_id, r.status, r.quantity,
                       r.started_at, r.current_period_start, r.current_period_end, r.cancel_at_period_end, r.ended_at)
            ), logged as (
                insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
                select p_tenancy_id, c.subscription_id, c.from_version_id, c.product_version_id from changed c
                where c.from_version_id <> c.product_version_id
            ), updated as (
                update billing.subscriptions s
                set customer_type = c.customer_type, customer_id = c.customer_id, product_id = c.product_id,
                    product_version_id = c.product_version_id, product_line = c.product_line, is_add_on = c.is_add_on,
                    stackable = c.stackable, status = c.status, quantity = c.quantity, started_at = c.started_at,
                    current_period_start = c.current_period_start, current_period_end = c.current_period_end,
                    cancel_at_period_end = c.cancel_at_period_end, ended_at = c.ended_at
                from changed c
                where s.tenancy_id = p_tenancy_id and s.id = c.subscription_id
                returning 1
            )
            select count(*) into v_count from updated;
            v_total := v_total + v_count;
        end loop;

        insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id, product_version_id,
                                           product_line, is_add_on, stackable, status, quantity, started_at,
                                           current_period_start, current_period_end, cancel_at_period_end, ended_at,
                                           stripe_subscription_id, creation_source)
        select p_tenancy_id, r.customer_type, r.customer_id, r.product_id, r.product_version_id, r.product_line,
               r.is_add_on, r.stackable, r.status, r.quantity, r.started_at, r.current_period_start,
               r.current_period_end, r.cancel_at_period_end, r.ended_at, r.stripe_subscription_id, 'stripe'
        from billing._stripe_subscription_rows(p_tenancy_id, p_rows, p_read_at) r
        where r.subscription_id is null
        order by r.ended_at is null, r.stripe_subscription_id
        -- a sync of the same tenancy that inserted it meanwhile wrote the same Stripe state
        on conflict (tenancy_id, stripe_subscription_id) where stripe_subscription_id is not null do nothing;
        get diagnostics v_count = row_count;
        v_total := v_total + v_count;
    exception when unique_violation then
        -- only a write racing this one gets here (the batch was checked above): a grant or
        -- another sync that made a live plan in the same customer and line meanwhile
        get stacked diagnostics v_detail = pg_exception_detail;
        raise exception 'Stripe subscriptions of tenancy % would give a customer two live plans in one product line: %',
            p_tenancy_id, v_detail using errcode = '23505';
    end;
    return v_total;
end;
$$;

comment on function billing.upsert_stripe_subscriptions(uuid, jsonb, timestamptz) is
    'Write a batch of a tenancy''s Stripe subscriptions by Stripe id: insert new ones, update only what differs, keep a version regen is still writing into Stripe. Returns rows written.';
