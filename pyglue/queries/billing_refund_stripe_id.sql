-- The Stripe refund that moved a refund's money back.
update billing.refunds set stripe_refund_id = %(stripe_refund_id)s
where tenancy_id = %(tenancy_id)s and id = %(refund_id)s
