-- app.metrics_cached(p_tenancy_id, p_include_anonymous, p_now, p_ttl interval default
-- '1 hour'): app.metrics through the TTL cache pyglue.cache_entries (namespace
-- 'app.metrics'). The key holds every parameter, with p_now as its UTC day (so a cached day
-- series never lags across midnight, and calls with now() within one day share a row):
-- '<tenancy>|<include_anonymous>|<UTC day>|<ttl>'. A hit returns the stored value; on a miss
-- the caller takes a transaction advisory lock on a hash of the key, looks again (a new
-- statement, so it sees a value another session committed while it waited), and only then
-- computes, stores (upsert: one row per key) and purges expired rows. So concurrent misses
-- compute once; the others wait for the first to commit and reuse its row.
-- Locks: pg_advisory_xact_lock(hashtextextended('pyglue.cache_entries|app.metrics|' || key, 0)),
-- held to the end of the caller's transaction (call it outside long transactions; under
-- REPEATABLE READ a waiter cannot see the committed row and computes again).
-- Errors: p_ttl must be positive (22023).
create or replace function app.metrics_cached(p_tenancy_id uuid, p_include_anonymous boolean default false,
                                              p_now timestamptz default now(), p_ttl interval default '1 hour')
returns jsonb
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key text := format('%s|%s|%s|%s', p_tenancy_id, p_include_anonymous,
                         to_char(p_now at time zone 'UTC', 'YYYY-MM-DD'), p_ttl);
    v_value jsonb;
begin
    if p_ttl is null or p_ttl <= interval '0' then
        raise exception 'p_ttl must be a positive interval, got %', coalesce(p_ttl::text, 'null')
            using errcode = '22023';
    end if;
    select c.value into v_value from pyglue.cache_entries c
    where c.namespace = 'app.metrics' and c.key = v_key and c.expires_at > clock_timestamp();
    if found then
        return v_value;
    end if;
    perform pg_advisory_xact_lock(hashtextextended('pyglue.cache_entries|app.metrics|' || v_key, 0));
    select c.value into v_value from pyglue.cache_entries c
    where c.namespace = 'app.metrics' and c.key = v_key and c.expires_at > clock_timestamp();
    if found then
        return v_value;
    end if;
    v_value := app.metrics(p_tenancy_id, p_include_anonymous, p_now);
    insert into pyglue.cache_entries as c (namespace, key, value, expires_at)
    values ('app.metrics', v_key, v_value, clock_timestamp() + p_ttl)
    on conflict (namespace, key) do update set value = excluded.value, expires_at = excluded.expires_at,
                                               created_at = clock_timestamp();
    perform pyglue.purge_cache_entries('app.metrics');
    return v_value;
end;
$$;

comment on function app.metrics_cached(uuid, boolean, timestamptz, interval) is
    'app.metrics through the TTL cache pyglue.cache_entries: one computation per key at a time; expired rows purged.';
