-- The tenancy a bulk load fills (its project made if missing).
with project as (
    insert into app.projects (id, display_name) values ('perf-bulk', 'Bulk load benchmark')
    on conflict (id) do nothing
)
insert into app.tenancies (project_id, branch_id) values ('perf-bulk', md5(random()::text))
returning id
