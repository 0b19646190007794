-- One manual change at a minute of the benchmark's clock (negative balances allowed).
select billing.change_item_quantity(%(tenancy_id)s, 'custom', %(customer_id)s, 'credits', %(delta)s, null, true,
                                    timestamptz '2030-01-01' + %(minute)s * interval '1 minute')
