-- Demo traffic: verify ten unverified emails (each re-syncs its user if primary).
update app.contact_channels set is_verified = true
where tenancy_id = %(tenancy_id)s
  and id in (select id from app.contact_channels
             where tenancy_id = %(tenancy_id)s and type = 'email' and not is_verified order by id limit 10)
