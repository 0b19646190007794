-- Tenancies for the dashboard's index (at most %(limit)s): those with sync targets first.
select tn.id, tn.project_id, tn.branch_id,
       (select count(*) from pyglue.sync_targets t where t.tenancy_id = tn.id) as targets
from app.tenancies tn
order by targets desc, tn.project_id, tn.branch_id, tn.id
limit %(limit)s
