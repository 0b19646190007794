-- Whether a tenancy exists in the reference model. In a database that is not migrated the
-- query fails on app.tenancies, and the CLI says to run pyglue db migrate.
select exists (select 1 from app.tenancies where id = %(tenancy_id)s) as present
