select app.metrics_cached(%(tenancy_id)s, %(anon)s, %(now)s) as m
