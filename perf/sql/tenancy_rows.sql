select count(*) as n from {table} where tenancy_id = %(tenancy_id)s
