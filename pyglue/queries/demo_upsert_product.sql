-- The demo's free plan in the internal tenancy: a new version when the content changed.
select billing.upsert_product(%(tenancy_id)s, 'free', %(content)s) as version
