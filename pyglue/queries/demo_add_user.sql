-- Demo traffic: one new user with a name that is not ASCII.
insert into app.users (tenancy_id, display_name) values (%(tenancy_id)s, 'Zoë New 🚀')
