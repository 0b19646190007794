-- How many users of perf/mock-users.sql a demo tenancy has.
select count(*) as n from app.users where tenancy_id = %(tenancy_id)s and server_metadata ? 'mock_n'
