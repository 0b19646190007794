-- One tenancy per project, with a fixed id (md5 of a name), so runs are alike.
insert into app.tenancies (id, project_id, branch_id) values (%(tenancy_id)s, %(project_id)s, 'main')
