-- billing.upsert_product(p_tenancy_id, p_product_id, p_content): write a product's content
-- and make it the product's current version.
--
-- Versions are content-addressed: the id is billing._version_id of (tenancy, product,
-- content), so writing the same content again (in any key order or spacing) finds the row
-- it made before (INSERT ... ON CONFLICT DO NOTHING) and changes nothing; a re-run writes
-- no row at all. Earlier versions stay: purchases pinned to them keep their terms until
-- billing.regen_subscriptions_to_latest moves them.
-- A product's customer_type never changes (its purchases belong to customers of that
-- type); write a new product instead.
-- Returns: the version id (64 hex digits).
-- Errors: 22004 null tenancy; 22023 bad product id, invalid content (see
-- billing._check_product_content) or a changed customer_type; P0002 unknown tenancy.
-- Locks: the product row (ON CONFLICT DO UPDATE), so concurrent writers of one product
-- take turns; the last to commit is current.
create or replace function billing.upsert_product(p_tenancy_id uuid, p_product_id text, p_content jsonb)
returns text
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_version_id text;
    v_customer_type text;
begin
    if p_tenancy_id is null then
        raise exception 'tenancy id must not be null' using errcode = '22004';
    end if;
    if p_product_id is null or p_product_id !~ '^[A-Za-z0-9_-]{1,64}$' then
        raise exception 'product id must be 1 to 64 letters, digits, _ or -, got %',
            coalesce(quote_literal(p_product_id), 'null') using errcode = '22023';
    end if;
    if not exists (select 1 from app.tenancies t where t.id = p_tenancy_id) then
        raise exception 'no tenancy %', p_tenancy_id using errcode = 'P0002';
    end if;
    perform billing._check_product_content(p_tenancy_id, p_product_id, p_content);

    select v.customer_type into v_customer_type
    from billing.products p join billing.product_versions v on v.id = p.current_version_id
    where p.tenancy_id = p_tenancy_id and p.product_id = p_product_id;
    if v_customer_type <> p_content ->> 'customer_type' then
        raise exception 'product "%": customer_type cannot change from % to %; its purchases belong to % customers',
            p_product_id, v_customer_type, p_content ->> 'customer_type', v_customer_type using errcode = '22023';
    end if;

    v_version_id := billing._version_id(p_tenancy_id, p_product_id, p_content);
    insert into billing.product_versions (id, tenancy_id, product_id, content)
    values (v_version_id, p_tenancy_id, p_product_id, p_content)
    on conflict (id) do nothing;
    insert into billing.products as p (tenancy_id, product_id, current_version_id)
    values (p_tenancy_id, p_product_id, v_version_id)
    on conflict (tenancy_id, product_id) do update
        set current_version_id = excluded.current_version_id, updated_at = now()
        where p.current_version_id <> excluded.current_version_id;
    return v_version_id;
end;
$$;

comment on function billing.upsert_product(uuid, text, jsonb) is
    'Validate product content, store it as a content-addressed version (no new row for known content) and make it current. Returns the version id.';
