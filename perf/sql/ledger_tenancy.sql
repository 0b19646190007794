-- The benchmark's project and tenancy.
with project as (insert into app.projects (id, display_name) values ('bench', 'bench') on conflict do nothing)
insert into app.tenancies (project_id, branch_id) values ('bench', 'main') returning id
