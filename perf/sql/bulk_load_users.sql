-- A tenancy's bulk load, first statement: the users, in one INSERT.
insert into app.users (tenancy_id, display_name, signed_up_at, is_anonymous)
select %(tenancy_id)s, 'User ' || i, timestamptz '2026-01-01' + i * interval '1 second', i %% 10 = 0
from generate_series(1, %(users)s) as i
