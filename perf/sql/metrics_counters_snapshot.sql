select metric, bucket, is_anonymous, n from app.metrics_counters
where tenancy_id = %(tenancy_id)s and n <> 0 order by 1, 2, 3
