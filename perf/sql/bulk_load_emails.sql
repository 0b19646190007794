-- A tenancy's bulk load, second statement: a primary email for each of its users.
insert into app.contact_channels (tenancy_id, user_id, type, value, is_primary)
select u.tenancy_id, u.id, 'email', 'u' || substr(u.display_name, 6) || '@ex.test', true
from app.users u
where u.tenancy_id = %(tenancy_id)s
