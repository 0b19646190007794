select app._rebuild_metrics(%(tenancy_id)s) as users
