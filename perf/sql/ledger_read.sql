-- A balance at a minute of the benchmark's clock.
select billing.item_quantity(%(tenancy_id)s, 'custom', %(customer_id)s, 'credits',
                             timestamptz '2030-01-01' + %(minute)s * interval '1 minute') as q
