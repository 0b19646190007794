-- Whether a tenancy exists in the reference model (true when there is no app.tenancies:
-- pyglue's own schema does not depend on the app model).
select to_regclass('app.tenancies') is null
       or exists (select 1 from app.tenancies where id = %(tenancy_id)s) as present
