select billing.upsert_product(%(tenancy_id)s, %(product_id)s, %(content)s) as version_id
