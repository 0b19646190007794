select app.metrics(%(tenancy_id)s, %(anon)s, %(now)s) as m
