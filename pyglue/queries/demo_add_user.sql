-- Demo traffic: one new user with a name that is not ASCII; its id.
insert into app.users (tenancy_id, display_name) values (%(tenancy_id)s, 'Zoë New 🚀 ' || %(stamp)s)
returning id
