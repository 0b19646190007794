-- Refund a purchase once (billing.refund): records the money, lowers its quantity.
select billing.refund(%(tenancy_id)s, %(purchase_kind)s, %(purchase_id)s, %(quantity)s, %(amount)s, %(currency)s)
       as refund_id
