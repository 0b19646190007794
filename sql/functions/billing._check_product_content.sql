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
