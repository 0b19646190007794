-- Whether a tenancy has users of perf/mock-users.sql (perf/mock-metric-events.sql spreads its
-- events over them).
select exists (select 1 from app.users where tenancy_id = %(tenancy_id)s and server_metadata ? 'mock_n') as present
