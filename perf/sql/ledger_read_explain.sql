-- The server's execution time of one balance read.
explain (analyze) select billing.item_quantity(%(tenancy_id)s, 'custom', %(customer_id)s, 'credits',
                                               timestamptz '2030-01-01' + %(minute)s * interval '1 minute')
