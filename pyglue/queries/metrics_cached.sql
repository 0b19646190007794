-- The dashboard metrics of a tenancy through the TTL cache (the dashboard's metrics page).
select app.metrics_cached(%(tenancy_id)s, %(include_anonymous)s, p_ttl => make_interval(secs => %(ttl_s)s)) as metrics
