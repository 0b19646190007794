-- A project of the billing benchmark ('internal' exists from migration 0002).
insert into app.projects (id, display_name) values (%(project_id)s, %(project_id)s)
on conflict (id) do nothing
