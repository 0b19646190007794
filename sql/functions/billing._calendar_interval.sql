-- billing._calendar_interval(p_spec): [n, "day" | "week" | "month" | "year"] as an interval
-- (calendar arithmetic: a month from Jan 31 is Feb 28 or 29); null for anything else, such
-- as "never". The spec is validated by billing.upsert_product before it is stored.
create or replace function billing._calendar_interval(p_spec jsonb)
returns interval
language sql
immutable
set search_path = pg_catalog, pg_temp
as $$
    select case when jsonb_typeof(p_spec) = 'array' then
               case p_spec ->> 1
                   when 'day' then make_interval(days => (p_spec ->> 0)::integer)
                   when 'week' then make_interval(weeks => (p_spec ->> 0)::integer)
                   when 'month' then make_interval(months => (p_spec ->> 0)::integer)
                   when 'year' then make_interval(years => (p_spec ->> 0)::integer)
               end
           end;
$$;

comment on function billing._calendar_interval(jsonb) is
    'A [n, unit] spec (unit day, week, month or year) as a calendar interval; null for "never" or anything else.';
