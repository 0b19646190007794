-- The per-row loop's regen, per subscription: pin it to the current version.
update billing.subscriptions
set product_version_id = %(version_id)s, product_line = %(product_line)s, is_add_on = %(is_add_on)s,
    stackable = %(stackable)s
where tenancy_id = %(tenancy_id)s and id = %(subscription_id)s
