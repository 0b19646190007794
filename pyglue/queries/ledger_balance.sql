-- The balance of one item of a customer at a time (billing.item_quantity).
select billing.item_quantity(%(tenancy_id)s, %(customer_type)s, %(customer_id)s, %(item_id)s, %(at)s) as balance
