-- The per-row loop's backfill, step 0: every team of the tenancy (one query).
select t.id from app.teams t where t.tenancy_id = %(tenancy_id)s order by t.id
