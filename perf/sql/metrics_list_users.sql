select app.list_users(%(tenancy_id)s, %(limit)s, %(cursor)s, %(query)s) as p
