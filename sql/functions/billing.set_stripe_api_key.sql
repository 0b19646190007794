-- billing.set_stripe_api_key(p_tenancy_id, p_api_key): store (or, with null, remove) the
-- Stripe secret key a tenancy's Stripe sync and metadata writes use. Without one, pyglue
-- uses $PYGLUE_STRIPE_API_KEY.
--
-- The key lives in billing.stripe_settings, which only the owner reads (not the mapping
-- reader role, not PUBLIC); no message of this function shows it.
-- Returns: true when a key is now stored, false when none is.
-- Errors: 22004 null tenancy; P0002 unknown tenancy; 22023 a key that does not look like a
-- Stripe secret or restricted key (sk_... / rk_..., no white space).
-- Locks: the tenancy's settings row.
create or replace function billing.set_stripe_api_key(p_tenancy_id uuid, p_api_key text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if not exists (select 1 from app.tenancies t where t.id = p_tenancy_id) then
        raise exception 'no tenancy %', p_tenancy_id using errcode = 'P0002';
    end if;
    if p_api_key is null then
        delete from billing.stripe_settings s where s.tenancy_id = p_tenancy_id;
        return false;
    end if;
    if p_api_key !~ '^(sk|rk)_[A-Za-z0-9_]{8,250}$' then
        raise exception 'the Stripe API key for tenancy % must be a secret or restricted key (sk_... or rk_...); the value given is not shown',
            p_tenancy_id using errcode = '22023';
    end if;
    insert into billing.stripe_settings as s (tenancy_id, api_key) values (p_tenancy_id, p_api_key)
    on conflict (tenancy_id) do update set api_key = excluded.api_key, updated_at = now()
        where s.api_key is distinct from excluded.api_key;
    return true;
end;
$$;

comment on function billing.set_stripe_api_key(uuid, text) is
    'Store (null: remove) the Stripe secret key of a tenancy in billing.stripe_settings, which the mapping reader cannot read. Never echoes the key.';
