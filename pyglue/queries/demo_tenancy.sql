-- The demo tenancy (project 'demo', branch 'main'), created on first use. Param: project.
with project as (
    insert into app.projects (id, display_name) values (%(project)s, 'Demo')
    on conflict do nothing
), created as (
    insert into app.tenancies (project_id, branch_id) values (%(project)s, 'main')
    on conflict do nothing
    returning id
)
select id from created
union all
select id from app.tenancies where project_id = %(project)s and branch_id = 'main'
limit 1
