-- A demo project and its tenancy (branch 'main', fixed id), created on first use.
-- Params: project, display_name, tenancy_id.
with project as (
    insert into app.projects (id, display_name) values (%(project)s, %(display_name)s)
    on conflict (id) do nothing
)
insert into app.tenancies (id, project_id, branch_id) values (%(tenancy_id)s, %(project)s, 'main')
on conflict do nothing
