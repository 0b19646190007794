-- The baseline's write: one batch of users as column arrays, upserted in one statement (its
-- own transaction: the driver's target connection is in autocommit). Same target table
-- shape as the users mapping's; every non-key column is overwritten on conflict.
insert into {table} as t (id, display_name, profile_image_url, primary_email, primary_email_verified,
                          signed_up_at, is_anonymous, client_metadata, client_read_only_metadata, server_metadata)
select *
from unnest(%(id)s::uuid[], %(display_name)s::text[], %(profile_image_url)s::text[], %(primary_email)s::text[],
            %(primary_email_verified)s::boolean[], %(signed_up_at)s::timestamptz[], %(is_anonymous)s::boolean[],
            %(client_metadata)s::jsonb[], %(client_read_only_metadata)s::jsonb[], %(server_metadata)s::jsonb[])
on conflict (id) do update
    set display_name = excluded.display_name, profile_image_url = excluded.profile_image_url,
        primary_email = excluded.primary_email, primary_email_verified = excluded.primary_email_verified,
        signed_up_at = excluded.signed_up_at, is_anonymous = excluded.is_anonymous,
        client_metadata = excluded.client_metadata, client_read_only_metadata = excluded.client_read_only_metadata,
        server_metadata = excluded.server_metadata
