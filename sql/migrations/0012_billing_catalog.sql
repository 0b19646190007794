-- billing catalog (issue 9): products with immutable content-addressed versions,
-- subscriptions and one-time purchases pinned to a version, a forward-only log of version
-- moves, and the functions behind the two scripts run after every deploy (free-plan
-- backfill, regen to latest), all set-based. Stripe sync and `pyglue db init` come later;
-- the columns they need (stripe_subscription_id, creation_source) are here.
-- depends: 0011_fetch_login

-- copied from sql/functions/billing._version_id.sql (the version table checks its ids with it)
-- billing._version_id(p_tenancy_id, p_product_id, p_content): the id of a product version,
-- the sha256 (hex) of the canonical JSON text of {tenancy_id, product_id, content}.
--
-- Canonical: jsonb keeps no key order or whitespace of its input (keys are stored sorted,
-- duplicates dropped, output spaced one way), so jsonb::text is the same for any spelling
-- of the same object. Numbers keep their written form ("1" and "1.0" differ); the
-- validation of billing.upsert_product only accepts plain integers where it wants one.
-- The tenancy and product are part of the hashed text, so equal content of two products or
-- two tenancies never shares a version row (versions are keyed by id alone).
-- Declared IMMUTABLE although jsonb_build_object and convert_to are STABLE in general:
-- for uuid, text and jsonb arguments and the fixed target encoding they always give the
-- same bytes, and billing.product_versions checks its ids with this function.
-- Returns: 64 lowercase hex digits; null when an argument is null.
create or replace function billing._version_id(p_tenancy_id uuid, p_product_id text, p_content jsonb)
returns text
language sql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
    select encode(sha256(convert_to(
        jsonb_build_object('tenancy_id', p_tenancy_id, 'product_id', p_product_id, 'content', p_content)::text,
        'UTF8')), 'hex');
$$;

comment on function billing._version_id(uuid, text, jsonb) is
    'Content address of a product version: sha256 hex of the canonical jsonb text of {tenancy_id, product_id, content}.';

-- products: what a tenancy sells; current_version_id is the version new purchases get.
create table if not exists billing.products (
    tenancy_id         uuid not null references app.tenancies (id) on delete cascade,
    product_id         text not null check (product_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    current_version_id text not null,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    primary key (tenancy_id, product_id)
);
comment on table billing.products is 'Products of a tenancy; current_version_id is what new purchases and regen pin to';

-- product_versions: immutable, content-addressed. id is checked against the content, so a
-- row whose content was edited in place cannot exist (and its id is referenced, so it
-- cannot change either). The columns purchases need are generated from the content.
create table if not exists billing.product_versions (
    id            text primary key,
    tenancy_id    uuid not null references app.tenancies (id) on delete cascade,
    product_id    text not null,
    content       jsonb not null,
    customer_type text not null generated always as (content ->> 'customer_type') stored
                  check (customer_type in ('user', 'team', 'custom')),
    product_line  text generated always as (content ->> 'product_line') stored,
    is_add_on     boolean not null generated always as
                  (coalesce(jsonb_typeof(content -> 'is_add_on_to') in ('object', 'array'), false)) stored,
    stackable     boolean not null generated always as (coalesce((content ->> 'stackable')::boolean, false)) stored,
    -- what excludes what: products of one line exclude each other, a product without a
    -- line excludes only itself (the prefixes keep a line and a product id apart)
    line_key      text not null generated always as
                  (coalesce('line:' || (content ->> 'product_line'), 'product:' || product_id)) stored,
    created_at    timestamptz not null default now(),
    constraint product_versions_content_address_check check (id = billing._version_id(tenancy_id, product_id, content)),
    -- what the foreign keys of products, one-time purchases and subscriptions point at
    constraint product_versions_product_key unique (tenancy_id, product_id, id),
    constraint product_versions_customer_type_key unique (tenancy_id, product_id, id, customer_type),
    constraint product_versions_exclusivity_key
        unique (tenancy_id, product_id, id, customer_type, line_key, is_add_on, stackable)
);
comment on table billing.product_versions is
    'Immutable product content, id = sha256 of the canonical jsonb text of {tenancy_id, product_id, content} (billing._version_id)';

alter table billing.products add constraint products_current_version_fkey
    foreign key (tenancy_id, product_id, current_version_id)
    references billing.product_versions (tenancy_id, product_id, id);

-- subscriptions: pinned to a version. product_line, is_add_on and stackable are copies of
-- the version's (held equal by the foreign key, through line_key) so that the unique index
-- can say "one live plan per customer and line". Live = ended_at is null; a canceled (or
-- incomplete_expired) subscription is exactly one with ended_at.
create table if not exists billing.subscriptions (
    tenancy_id             uuid not null references app.tenancies (id) on delete cascade,
    id                     uuid not null default gen_random_uuid(),
    customer_type          text not null check (customer_type in ('user', 'team', 'custom')),
    customer_id            text not null check (customer_id <> ''),
    product_id             text not null,
    product_version_id     text not null,
    product_line           text,
    is_add_on              boolean not null,
    stackable              boolean not null,
    line_key               text not null generated always as
                           (coalesce('line:' || product_line, 'product:' || product_id)) stored,
    status                 text not null check (status in ('incomplete', 'incomplete_expired', 'trialing', 'active',
                                                           'past_due', 'canceled', 'unpaid', 'paused')),
    quantity               integer not null check (quantity > 0),
    started_at             timestamptz not null,
    current_period_start   timestamptz not null,
    current_period_end     timestamptz not null,
    cancel_at_period_end   boolean not null default false,
    ended_at               timestamptz,
    stripe_subscription_id text,
    creation_source        text not null check (creation_source in ('test_mode', 'api_grant', 'stripe')),
    created_at             timestamptz not null default now(),
    primary key (tenancy_id, id),
    constraint subscriptions_version_fkey
        foreign key (tenancy_id, product_id, product_version_id, customer_type, line_key, is_add_on, stackable)
        references billing.product_versions (tenancy_id, product_id, id, customer_type, line_key, is_add_on, stackable),
    constraint subscriptions_period_check check (current_period_end > current_period_start),
    constraint subscriptions_ended_check check (ended_at is null or ended_at >= started_at),
    constraint subscriptions_ended_status_check
        check ((status in ('canceled', 'incomplete_expired')) = (ended_at is not null)),
    constraint subscriptions_stripe_source_check
        check ((creation_source = 'stripe') = (stripe_subscription_id is not null))
);
comment on table billing.subscriptions is
    'Subscriptions pinned to a product version; live while ended_at is null; one live plan per customer and product line';
-- one live subscription per customer and product line, add-ons and stackable products aside
create unique index if not exists subscriptions_one_live_plan_idx
    on billing.subscriptions (tenancy_id, customer_type, customer_id, line_key)
    where ended_at is null and not is_add_on and not stackable;
create unique index if not exists subscriptions_stripe_id_idx
    on billing.subscriptions (tenancy_id, stripe_subscription_id) where stripe_subscription_id is not null;
create index if not exists subscriptions_customer_idx
    on billing.subscriptions (tenancy_id, customer_type, customer_id);
-- No index on product_version_id: regen walks the primary key, and leaving the version
-- out of every index keeps its UPDATE a HOT update when the page has room.

create table if not exists billing.one_time_purchases (
    tenancy_id               uuid not null references app.tenancies (id) on delete cascade,
    id                       uuid not null default gen_random_uuid(),
    customer_type            text not null check (customer_type in ('user', 'team', 'custom')),
    customer_id              text not null check (customer_id <> ''),
    product_id               text not null,
    product_version_id       text not null,
    quantity                 integer not null check (quantity > 0),
    creation_source          text not null check (creation_source in ('test_mode', 'api_grant', 'stripe')),
    stripe_payment_intent_id text,
    purchased_at             timestamptz not null,
    created_at               timestamptz not null default now(),
    revoked_at               timestamptz,
    primary key (tenancy_id, id),
    constraint one_time_purchases_version_fkey
        foreign key (tenancy_id, product_id, product_version_id, customer_type)
        references billing.product_versions (tenancy_id, product_id, id, customer_type),
    constraint one_time_purchases_revoked_check check (revoked_at is null or revoked_at >= purchased_at),
    constraint one_time_purchases_stripe_source_check
        check ((creation_source = 'stripe') = (stripe_payment_intent_id is not null))
);
comment on table billing.one_time_purchases is 'One-time purchases pinned to a product version; revoked_at ends them';
create unique index if not exists one_time_purchases_stripe_id_idx
    on billing.one_time_purchases (tenancy_id, stripe_payment_intent_id) where stripe_payment_intent_id is not null;
create index if not exists one_time_purchases_customer_idx
    on billing.one_time_purchases (tenancy_id, customer_type, customer_id);

-- forward-only history of regen: a row per move, never updated. The version ids carry no
-- foreign keys: only regen writes them, from a subscription whose version key was just
-- checked, versions are never deleted but with their tenancy (whose deletion reaches this
-- table through the subscription), and the two checks cost 2 of 14 s per 100,000 moves.
create table if not exists billing.subscription_moves (
    tenancy_id      uuid not null,
    id              bigint generated always as identity,
    subscription_id uuid not null,
    from_version_id text not null,
    to_version_id   text not null,
    moved_at        timestamptz not null default now(),
    primary key (tenancy_id, id),
    constraint subscription_moves_subscription_fkey
        foreign key (tenancy_id, subscription_id) references billing.subscriptions (tenancy_id, id) on delete cascade,
    check (from_version_id <> to_version_id)
);
comment on table billing.subscription_moves is
    'Each move of a subscription to another product version (regen): from, to, when. Never updated';
create index if not exists subscription_moves_subscription_idx
    on billing.subscription_moves (tenancy_id, subscription_id, moved_at);

-- copied from sql/functions/billing._recurring_interval.sql
-- billing._recurring_interval(p_content): the billing interval of validated product
-- content, or null when its prices have none (a one-time product, or no prices at all).
--
-- billing.upsert_product refuses content whose prices disagree on being recurring, so
-- "has an interval" is a property of the product. With several recurring prices (monthly
-- and yearly) the first price id in byte order decides the period of a test-mode or API
-- grant. [n, unit] becomes make_interval(n units): calendar arithmetic, so a month from
-- Jan 31 is Feb 29 (or 28).
create or replace function billing._recurring_interval(p_content jsonb)
returns interval
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case p.value -> 'interval' ->> 1
               when 'day' then make_interval(days => (p.value -> 'interval' ->> 0)::integer)
               when 'week' then make_interval(weeks => (p.value -> 'interval' ->> 0)::integer)
               when 'month' then make_interval(months => (p.value -> 'interval' ->> 0)::integer)
               when 'year' then make_interval(years => (p.value -> 'interval' ->> 0)::integer)
           end
    from jsonb_each(case jsonb_typeof(p_content -> 'prices') when 'object' then p_content -> 'prices' end) as p
    where jsonb_typeof(p.value -> 'interval') = 'array'
    order by p.key collate "C"
    limit 1;
$$;

comment on function billing._recurring_interval(jsonb) is
    'Billing interval of product content (its first recurring price by id), or null for a one-time product.';

-- copied from sql/functions/billing._check_product_content.sql
-- billing._check_product_content(p_tenancy_id, p_product_id, p_content): refuse product
-- content that does not follow the product format of DESIGN.md ("Billing").
--
-- The format: an object with display_name (non-empty string), customer_type ('user',
-- 'team' or 'custom'), product_line (optional non-empty string), stackable (optional
-- boolean), is_add_on_to (optional: null/false, or the base products as an object
-- {product_id: true} or an array of ids, each an existing product of the tenancy other
-- than this one), prices ({price_id: {"amounts": {"USD": "49"}, "interval": [1, "month"]
-- | null}}: amounts are non-negative decimal strings per three-letter currency, interval
-- counts are integers 1..9999 of day/week/month/year, and all prices of a product agree on
-- having an interval or not), included_items (optional {item_id: {"quantity": integer >= 0,
-- "repeat": [n, unit] | "never", "expires": "never" | "when-purchase-expires" |
-- "when-repeated"}}, where when-repeated needs a repeat). Unknown fields are refused, so a
-- typo is an error rather than content nobody reads. Integers must be written as plain
-- integers (1, not 1.0 or 1e0): the version id hashes the text, and one number written two
-- ways must not make two versions.
-- Errors: 22023 naming the product, the path of the bad field and the value found.
-- Reads billing.products (add-on bases).
create or replace function billing._check_product_content(p_tenancy_id uuid, p_product_id text, p_content jsonb)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key text;
    v_value jsonb;
    v_path text;
    v_field record;
    v_recurring boolean;
    v_first_recurring boolean;
    v_base text;
    v_units constant text[] := array['day', 'week', 'month', 'year'];
begin
    if jsonb_typeof(p_content) is distinct from 'object' then
        raise exception 'product "%": content must be a JSON object, got %', p_product_id,
            coalesce(p_content::text, 'nothing') using errcode = '22023';
    end if;
    select string_agg(k, ', ' order by k) into v_key from jsonb_object_keys(p_content) as k
    where k <> all (array['display_name', 'customer_type', 'product_line', 'stackable', 'is_add_on_to',
                          'prices', 'included_items']);
    if v_key is not null then
        raise exception 'product "%": unknown field(s) %', p_product_id, v_key using errcode = '22023';
    end if;

    v_value := p_content -> 'display_name';
    if jsonb_typeof(v_value) is distinct from 'string' or btrim(v_value #>> '{}') = '' then
        raise exception 'product "%": display_name must be a non-empty string, got %', p_product_id,
            coalesce(v_value::text, 'nothing') using errcode = '22023';
    end if;
    v_value := p_content -> 'customer_type';
    if v_value is null or v_value not in ('"user"', '"team"', '"custom"') then
        raise exception 'product "%": customer_type must be one of user, team, custom, got %', p_product_id,
            coalesce(v_value::text, 'nothing') using errcode = '22023';
    end if;
    v_value := p_content -> 'product_line';
    if jsonb_typeof(v_value) not in ('string', 'null') or btrim(v_value #>> '{}') = '' then
        raise exception 'product "%": product_line must be a non-empty string or null, got %', p_product_id,
            v_value using errcode = '22023';
    end if;
    v_value := p_content -> 'stackable';
    if jsonb_typeof(v_value) not in ('boolean', 'null') then
        raise exception 'product "%": stackable must be true or false, got %', p_product_id, v_value
            using errcode = '22023';
    end if;

    -- is_add_on_to: null/false, {base: true, ...} or [base, ...]
    v_value := p_content -> 'is_add_on_to';
    if v_value is not null and v_value not in ('null', 'false') then
        if jsonb_typeof(v_value) = 'object' then
            select e.key into v_key from jsonb_each(v_value) as e
            where e.value <> 'true' order by e.key limit 1;
            if found then
                raise exception 'product "%": is_add_on_to.% must be true, got %', p_product_id, v_key,
                    v_value -> v_key using errcode = '22023';
            end if;
        elsif jsonb_typeof(v_value) = 'array' then
            if exists (select 1 from jsonb_array_elements(v_value) as e where jsonb_typeof(e) <> 'string') then
                raise exception 'product "%": is_add_on_to must list product ids as strings, got %', p_product_id,
                    v_value using errcode = '22023';
            end if;
        end if;
        if jsonb_typeof(v_value) not in ('object', 'array') or v_value in ('{}', '[]') then
            raise exception 'product "%": is_add_on_to must be false, null, {product_id: true, ...} or a non-empty list of product ids, got %',
                p_product_id, v_value using errcode = '22023';
        end if;
        for v_base in
            select b from (select jsonb_object_keys(v_value) as b where jsonb_typeof(v_value) = 'object'
                           union all
                           select jsonb_array_elements_text(v_value) where jsonb_typeof(v_value) = 'array') as bases
            order by b
        loop
            if v_base = p_product_id then
                raise exception 'product "%": is_add_on_to names the product itself', p_product_id
                    using errcode = '22023';
            end if;
            if not exists (select 1 from billing.products p where p.tenancy_id = p_tenancy_id and p.product_id = v_base) then
                raise exception 'product "%": is_add_on_to names product "%", which does not exist in tenancy %',
                    p_product_id, v_base, p_tenancy_id using errcode = '22023';
            end if;
        end loop;
    end if;

    -- prices
    v_value := p_content -> 'prices';
    if jsonb_typeof(v_value) is distinct from 'object' then
        raise exception 'product "%": prices must be an object of {price_id: {amounts, interval}}, got %',
            p_product_id, coalesce(v_value::text, 'nothing') using errcode = '22023';
    end if;
    for v_key, v_value in select e.key, e.value from jsonb_each(p_content -> 'prices') as e order by e.key collate "C" loop
        v_path := format('prices.%s', v_key);
        if jsonb_typeof(v_value) is distinct from 'object' then
            raise exception 'product "%": % must be an object {amounts, interval}, got %', p_product_id, v_path,
                v_value using errcode = '22023';
        end if;
        select string_agg(k, ', ' order by k) into v_base from jsonb_object_keys(v_value) as k
        where k not in ('amounts', 'interval');
        if v_base is not null then
            raise exception 'product "%": unknown field(s) % in %', p_product_id, v_base, v_path using errcode = '22023';
        end if;
        if jsonb_typeof(v_value -> 'amounts') is distinct from 'object' or v_value -> 'amounts' = '{}' then
            raise exception 'product "%": %.amounts must be a non-empty object {"USD": "49"}, got %', p_product_id,
                v_path, coalesce((v_value -> 'amounts')::text, 'nothing') using errcode = '22023';
        end if;
        for v_field in select a.key, a.value from jsonb_each(v_value -> 'amounts') as a order by a.key loop
            if v_field.key !~ '^[A-Z]{3}$' then
                raise exception 'product "%": %.amounts has currency "%"; currencies are three capital letters (USD)',
                    p_product_id, v_path, v_field.key using errcode = '22023';
            end if;
            if jsonb_typeof(v_field.value) <> 'string' or v_field.value #>> '{}' !~ '^[0-9]{1,12}(\.[0-9]{1,12})?$' then
                raise exception 'product "%": %.amounts.% must be a decimal string like "49" or "9.99", got %',
                    p_product_id, v_path, v_field.key, v_field.value using errcode = '22023';
            end if;
        end loop;
        if jsonb_typeof(v_value -> 'interval') = 'array' then
            if jsonb_array_length(v_value -> 'interval') <> 2
               or jsonb_typeof(v_value -> 'interval' -> 0) <> 'number'
               or (v_value -> 'interval' -> 0)::text !~ '^[1-9][0-9]{0,3}$'
               or not coalesce((v_value -> 'interval' ->> 1) = any (v_units)
                               and jsonb_typeof(v_value -> 'interval' -> 1) = 'string', false) then
                raise exception 'product "%": %.interval must be [count 1..9999, "day" | "week" | "month" | "year"] or null, got %',
                    p_product_id, v_path, v_value -> 'interval' using errcode = '22023';
            end if;
            v_recurring := true;
        elsif coalesce(v_value -> 'interval', 'null') = 'null' then
            v_recurring := false;
        else
            raise exception 'product "%": %.interval must be [count, unit] or null, got %', p_product_id, v_path,
                v_value -> 'interval' using errcode = '22023';
        end if;
        if v_first_recurring is null then
            v_first_recurring := v_recurring;
        elsif v_first_recurring <> v_recurring then
            raise exception 'product "%": % %, but an earlier price %; a product is either a subscription or a one-time purchase',
                p_product_id, v_path, case when v_recurring then 'has an interval' else 'has none' end,
                case when v_first_recurring then 'has one' else 'has none' end using errcode = '22023';
        end if;
    end loop;

    -- included_items
    v_value := p_content -> 'included_items';
    if jsonb_typeof(v_value) not in ('object', 'null') then
        raise exception 'product "%": included_items must be an object of {item_id: {quantity, repeat, expires}}, got %',
            p_product_id, v_value using errcode = '22023';
    end if;
    for v_key, v_value in
        select e.key, e.value from jsonb_each(case jsonb_typeof(p_content -> 'included_items')
                                                   when 'object' then p_content -> 'included_items' end) as e
        order by e.key collate "C"
    loop
        v_path := format('included_items.%s', v_key);
        if jsonb_typeof(v_value) is distinct from 'object' then
            raise exception 'product "%": % must be an object {quantity, repeat, expires}, got %', p_product_id,
                v_path, v_value using errcode = '22023';
        end if;
        select string_agg(k, ', ' order by k) into v_base from jsonb_object_keys(v_value) as k
        where k not in ('quantity', 'repeat', 'expires');
        if v_base is not null then
            raise exception 'product "%": unknown field(s) % in %', p_product_id, v_base, v_path using errcode = '22023';
        end if;
        if jsonb_typeof(v_value -> 'quantity') is distinct from 'number'
           or (v_value -> 'quantity')::text !~ '^[0-9]{1,18}$' then
            raise exception 'product "%": %.quantity must be an integer >= 0, got %', p_product_id, v_path,
                coalesce((v_value -> 'quantity')::text, 'nothing') using errcode = '22023';
        end if;
        if jsonb_typeof(v_value -> 'repeat') = 'array' then
            if jsonb_array_length(v_value -> 'repeat') <> 2
               or jsonb_typeof(v_value -> 'repeat' -> 0) <> 'number'
               or (v_value -> 'repeat' -> 0)::text !~ '^[1-9][0-9]{0,3}$'
               or not coalesce((v_value -> 'repeat' ->> 1) = any (v_units)
                               and jsonb_typeof(v_value -> 'repeat' -> 1) = 'string', false) then
                raise exception 'product "%": %.repeat must be [count 1..9999, "day" | "week" | "month" | "year"] or "never", got %',
                    p_product_id, v_path, v_value -> 'repeat' using errcode = '22023';
            end if;
        elsif coalesce(v_value -> 'repeat', '"never"') <> '"never"' then
            raise exception 'product "%": %.repeat must be [count, unit] or "never", got %', p_product_id, v_path,
                v_value -> 'repeat' using errcode = '22023';
        end if;
        if coalesce(v_value -> 'expires', '"never"') not in ('"never"', '"when-purchase-expires"', '"when-repeated"') then
            raise exception 'product "%": %.expires must be "never", "when-purchase-expires" or "when-repeated", got %',
                p_product_id, v_path, v_value -> 'expires' using errcode = '22023';
        end if;
        if v_value -> 'expires' = '"when-repeated"' and jsonb_typeof(v_value -> 'repeat') is distinct from 'array' then
            raise exception 'product "%": %.expires is "when-repeated" but the item never repeats', p_product_id,
                v_path using errcode = '22023';
        end if;
    end loop;
end;
$$;

comment on function billing._check_product_content(uuid, text, jsonb) is
    'Raise 22023 naming the product, field path and value when product content does not follow the product format.';

-- copied from sql/functions/billing.upsert_product.sql
-- billing.upsert_product(p_tenancy_id, p_product_id, p_content): write a product's content
-- and make it the product's current version.
--
-- Versions are content-addressed: the id is billing._version_id of (tenancy, product,
-- content), so writing the same content again (in any key order or spacing) finds the row
-- it made before (INSERT ... ON CONFLICT DO NOTHING) and changes nothing; a re-run writes
-- no row at all. Earlier versions stay: purchases pinned to them keep their terms until
-- billing.regen_subscriptions_to_latest moves them.
-- A product's customer_type never changes (its purchases belong to customers of that
-- type); write a new product instead.
-- Returns: the version id (64 hex digits).
-- Errors: 22004 null tenancy; 22023 bad product id, invalid content (see
-- billing._check_product_content) or a changed customer_type; P0002 unknown tenancy.
-- Locks: the product row (ON CONFLICT DO UPDATE), so concurrent writers of one product
-- take turns; the last to commit is current.
create or replace function billing.upsert_product(p_tenancy_id uuid, p_product_id text, p_content jsonb)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_version_id text;
    v_customer_type text;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if p_product_id is null or p_product_id !~ '^[A-Za-z0-9_-]{1,64}$' then
        raise exception 'product id must be 1 to 64 letters, digits, _ or -, got %',
            coalesce(quote_literal(p_product_id), 'null') using errcode = '22023';
    end if;
    if not exists (select 1 from app.tenancies t where t.id = p_tenancy_id) then
        raise exception 'no tenancy %', p_tenancy_id using errcode = 'P0002';
    end if;
    perform billing._check_product_content(p_tenancy_id, p_product_id, p_content);

    select v.customer_type into v_customer_type
    from billing.products p join billing.product_versions v on v.id = p.current_version_id
    where p.tenancy_id = p_tenancy_id and p.product_id = p_product_id;
    if v_customer_type <> p_content ->> 'customer_type' then
        raise exception 'product "%": customer_type cannot change from % to %; its purchases belong to % customers',
            p_product_id, v_customer_type, p_content ->> 'customer_type', v_customer_type using errcode = '22023';
    end if;

    v_version_id := billing._version_id(p_tenancy_id, p_product_id, p_content);
    insert into billing.product_versions (id, tenancy_id, product_id, content)
    values (v_version_id, p_tenancy_id, p_product_id, p_content)
    on conflict (id) do nothing;
    insert into billing.products as p (tenancy_id, product_id, current_version_id)
    values (p_tenancy_id, p_product_id, v_version_id)
    on conflict (tenancy_id, product_id) do update
        set current_version_id = excluded.current_version_id, updated_at = now()
        where p.current_version_id <> excluded.current_version_id;
    return v_version_id;
end;
$$;

comment on function billing.upsert_product(uuid, text, jsonb) is
    'Validate product content, store it as a content-addressed version (no new row for known content) and make it current. Returns the version id.';

-- copied from sql/functions/billing.grant_product.sql
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

-- copied from sql/functions/billing.cancel_subscription.sql
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

-- copied from sql/functions/billing.backfill_free_plans.sql
-- billing.backfill_free_plans(p_project_id, p_product_id, p_batch_size, p_limit): give
-- every team of the project's tenancies that has no live plan in the free product's line
-- a subscription to the free product's current version.
--
-- A live plan is a live (ended_at null) subscription of that product line that is not an
-- add-on and not stackable, free or paid: exactly what the unique index
-- billing.subscriptions_one_live_plan_idx allows once per customer and line. Tenancies of
-- the project without the product are skipped; a project where no tenancy has it returns
-- 0 with a NOTICE (a fresh database, or a product not written yet, is not an error for a
-- job run after every deploy). Grants are api_grant subscriptions, quantity 1, active,
-- first period now() .. now() + the product's interval.
--
-- Set-based: per tenancy, one INSERT ... SELECT per batch of p_batch_size teams, walking
-- the teams in id order (keyset), with ON CONFLICT DO NOTHING on the unique index. So it
-- is idempotent (a re-run inserts nothing and writes no row) and safe to run twice at
-- once: a run that meets a team another run is granting waits for that transaction and
-- then skips the team if it committed (or grants it if it rolled back), and every team
-- ends with one free plan. p_limit stops after that many grants (null: no limit), so a
-- caller can commit every p_limit rows and call again until it returns 0 (teams that have
-- a plan are walked again each call; a probe each); a killed run loses only its
-- uncommitted batch, and the next run picks up what is missing.
-- Returns: teams granted by this call.
-- Errors: 22023 bad batch size or limit, or a free product that is not a team
-- subscription exclusive in its line (customer_type team, an interval, neither add-on nor
-- stackable); P0002 unknown project. Checks every tenancy's product before writing.
-- Locks: the inserted rows; waits on concurrent inserts into the same (team, line).
create or replace function billing.backfill_free_plans(p_project_id text default 'internal',
                                                       p_product_id text default 'free',
                                                       p_batch_size integer default 10000,
                                                       p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_free record;
    v_tenancies integer := 0;
    v_from uuid;
    v_last uuid;
    v_batch bigint;
    v_granted bigint;
    v_total bigint := 0;
begin
    if p_batch_size is null or p_batch_size < 1 then
        raise exception 'batch size must be at least 1, got %', coalesce(p_batch_size::text, 'null')
            using errcode = '22023';
    end if;
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
    end if;
    if not exists (select 1 from app.projects pr where pr.id = p_project_id) then
        raise exception 'no project %', coalesce(quote_literal(p_project_id), 'null') using errcode = 'P0002';
    end if;

    -- every tenancy's free product is checked before anything is written
    select tn.id as tenancy_id, v.customer_type, v.is_add_on, v.stackable,
           billing._recurring_interval(v.content) as period
    into v_free
    from app.tenancies tn
    join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
    join billing.product_versions v on v.id = p.current_version_id
    where tn.project_id = p_project_id
      and (v.customer_type <> 'team' or v.is_add_on or v.stackable or billing._recurring_interval(v.content) is null)
    order by tn.id
    limit 1;
    if found then
        raise exception 'free product "%" of tenancy % must be a team subscription that is neither an add-on nor stackable (customer_type %, interval %, add-on %, stackable %)',
            p_product_id, v_free.tenancy_id, v_free.customer_type, coalesce(v_free.period::text, 'none'),
            v_free.is_add_on, v_free.stackable using errcode = '22023';
    end if;

    for v_free in
        select tn.id as tenancy_id, v.id as version_id, v.product_line, v.line_key,
               billing._recurring_interval(v.content) as period
        from app.tenancies tn
        join billing.products p on p.tenancy_id = tn.id and p.product_id = p_product_id
        join billing.product_versions v on v.id = p.current_version_id
        where tn.project_id = p_project_id
        order by tn.id
    loop
        v_tenancies := v_tenancies + 1;
        v_from := '00000000-0000-0000-0000-000000000000';  -- the smallest uuid
        v_last := null;
        loop
            v_batch := least(p_batch_size, p_limit - v_total);
            exit when v_batch <= 0;
            -- the next batch of teams (id >= v_from, the last batch's last team excluded);
            -- the unique index decides who gets a plan: a team with a live plan in the line
            -- is a conflict, found by one index probe and skipped without writing. No NOT
            -- EXISTS: right after a bulk load the planner may think billing.subscriptions is
            -- empty and turn it into a nested loop over every plan of the line per team.
            with batch as (
                select t.id from app.teams t
                where t.tenancy_id = v_free.tenancy_id and t.id >= v_from and t.id is distinct from v_last
                order by t.id
                limit v_batch
            ), granted as (
                insert into billing.subscriptions (tenancy_id, customer_type, customer_id, product_id,
                                                   product_version_id, product_line, is_add_on, stackable, status,
                                                   quantity, started_at, current_period_start, current_period_end,
                                                   creation_source)
                select v_free.tenancy_id, 'team', b.id::text, p_product_id, v_free.version_id, v_free.product_line,
                       false, false, 'active', 1, now(), now(), now() + v_free.period, 'api_grant'
                from batch b
                on conflict (tenancy_id, customer_type, customer_id, line_key)
                    where ended_at is null and not is_add_on and not stackable
                do nothing
                returning 1
            )
            select (select count(*) from granted), (select b.id from batch b order by b.id desc limit 1)
            into v_granted, v_last;
            exit when v_last is null;
            v_total := v_total + v_granted;
            v_from := v_last;
        end loop;
    end loop;
    if v_tenancies = 0 then
        raise notice 'no tenancy of project % has a product "%"; nothing to backfill', p_project_id, p_product_id;
    end if;
    return v_total;
end;
$$;

comment on function billing.backfill_free_plans(text, text, integer, bigint) is
    'Give every team of the project without a live plan in the free product''s line the free product''s current version. Idempotent, concurrency-safe, set-based. Returns teams granted.';

-- copied from sql/functions/billing.regen_subscriptions_to_latest.sql
-- billing.regen_subscriptions_to_latest(p_project_id, p_limit): move every
-- live subscription of the project's tenancies whose version is not its product's current
-- version to that version.
--
-- Any creation source moves: test-mode, API grants and Stripe-backed ones (the Stripe
-- layer must then write the new version id into the Stripe subscription's metadata, so a
-- later Stripe sync does not move it back; that outbox is not built yet). Ended
-- subscriptions keep the version they ended on; other projects are not read or written.
-- Forward-only: each move is one row in billing.subscription_moves (from, to, when),
-- which is never updated, so what a subscription was pinned to before is kept. The
-- copies of the version's product_line / is_add_on / stackable on the subscription follow
-- the version (a foreign key holds them equal).
--
-- Set-based: per tenancy of the project, one statement locks the stale rows and logs
-- their moves, one UPDATE moves them. Rows already on the current version are neither
-- locked nor updated, so a re-run moves 0 and writes nothing. Two runs at once: the second
-- waits on the rows the first locked, re-checks them (they are no longer on the old
-- version) and skips them, so each move is made and logged once. p_limit stops after that
-- many moves (null: no limit), for callers that commit in batches; calling again
-- continues with the rows still stale (a call racing another run may return 0 early:
-- the rows it waited for are the other run's). (No keyset batches inside one call: they would
-- share its transaction anyway, and ordering the stale rows cost more than moving them.)
-- Returns: subscriptions moved by this call.
-- Errors: 22023 bad limit; P0002 unknown project; 23505 a move that would
-- give a customer two live plans in one product line (the version changed its line or
-- stopped being an add-on), naming the project.
-- Locks: the moved rows (FOR NO KEY UPDATE) and the products of the tenancy that have
-- stale subscriptions (FOR SHARE: billing.upsert_product of them waits for the commit).
create or replace function billing.regen_subscriptions_to_latest(p_project_id text default 'internal',
                                                                 p_limit bigint default null)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_id uuid;
    v_ids uuid[];
    v_moved bigint;
    v_total bigint := 0;
    v_detail text;
begin
    if p_limit is not null and p_limit < 1 then
        raise exception 'limit must be at least 1 or null, got %', p_limit using errcode = '22023';
    end if;
    if not exists (select 1 from app.projects pr where pr.id = p_project_id) then
        raise exception 'no project %', coalesce(quote_literal(p_project_id), 'null') using errcode = 'P0002';
    end if;

    -- one exception block for the whole run, not one per tenancy: each block that writes is a
    -- subtransaction, and more than 64 of them in one transaction slow every snapshot
    begin
        for v_tenancy_id in
            select tn.id from app.tenancies tn
            where tn.project_id = p_project_id
              and exists (select 1 from billing.products p where p.tenancy_id = tn.id)
            order by tn.id
        loop
            exit when v_total >= p_limit;
            -- per tenancy two statements and no join of billing.subscriptions with itself
            -- or with a list of its rows: right after a bulk load the planner may take the
            -- table for empty and run such a join as a nested loop over all its rows per row.
            -- 1. Lock the stale rows (and their products, so the current version cannot
            -- change under us) and log the moves. A row another run moved meanwhile is
            -- re-checked after its lock is released, is no longer stale, and drops out.
            -- With p_limit, any p_limit - v_total of them: no order is needed, a moved row
            -- is no longer stale and the next call takes others.
            with stale as (
                select s.id, s.product_version_id as from_version_id, p.current_version_id as to_version_id
                from billing.subscriptions s
                join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
                where s.tenancy_id = v_tenancy_id and s.ended_at is null
                  and s.product_version_id <> p.current_version_id
                limit p_limit - v_total
                for no key update of s for share of p
            ), logged as (
                insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
                select v_tenancy_id, st.id, st.from_version_id, st.to_version_id from stale st
                returning subscription_id
            )
            select array_agg(l.subscription_id) into v_ids from logged l;
            continue when v_ids is null;
            -- 2. Move them: rows found by primary key (= ANY), the small product tables joined.
            update billing.subscriptions s
            set product_version_id = v.id, product_line = v.product_line, is_add_on = v.is_add_on,
                stackable = v.stackable
            from billing.products p join billing.product_versions v on v.id = p.current_version_id
            where s.tenancy_id = v_tenancy_id and s.id = any (v_ids)
              and p.tenancy_id = s.tenancy_id and p.product_id = s.product_id;
            get diagnostics v_moved = row_count;
            v_total := v_total + v_moved;
        end loop;
    exception when unique_violation then
        get stacked diagnostics v_detail = pg_exception_detail;
        raise exception 'regen of project % would give a customer two live plans in one product line in tenancy %: %',
            p_project_id, v_tenancy_id, v_detail using errcode = '23505';
    end;
    return v_total;
end;
$$;

comment on function billing.regen_subscriptions_to_latest(text, bigint) is
    'Move every live subscription of the project to its product''s current version, logging each move in billing.subscription_moves. Returns subscriptions moved.';
