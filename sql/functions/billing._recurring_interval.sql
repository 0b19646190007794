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
