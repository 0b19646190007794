-- the time of the newest activity event: a p_now with nothing after it, as now() would be
select max(occurred_at) + interval '1 second' as at from app.events
where tenancy_id = %(tenancy_id)s and event_type = '$user-activity'
