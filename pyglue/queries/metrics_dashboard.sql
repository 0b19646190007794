-- The dashboard metrics of a tenancy as app.metrics computes them now (pyglue metrics).
select app.metrics(%(tenancy_id)s, %(include_anonymous)s) as metrics
