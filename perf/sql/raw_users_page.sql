-- The baseline's read: one keyset page of a tenancy's users in primary-key order, with the
-- columns of the target's users table (the primary email joined in, as the users mapping
-- does), read the plainest way: as the owner, no row-level security, no read-only
-- transaction setup, no sequence ids, no tombstone branch.
select u.id, u.display_name, u.profile_image_url,
       pe.value as primary_email, coalesce(pe.is_verified, false) as primary_email_verified,
       u.signed_up_at, u.is_anonymous,
       u.client_metadata, u.client_read_only_metadata, u.server_metadata
from app.users u
left join lateral (
    select e.value, e.is_verified
    from app.contact_channels e
    where e.tenancy_id = u.tenancy_id and e.user_id = u.id and e.type = 'email' and e.is_primary
    limit 1
) pe on true
where u.tenancy_id = %(tenancy_id)s and u.id > %(after)s
order by u.id
limit %(limit)s
