-- billing._version_id(p_tenancy_id, p_product_id, p_content): the id of a product version,
-- the sha256 (hex) of the canonical JSON text of {tenancy_id, product_id, content}.
--
-- Canonical: jsonb keeps no key order or whitespace of its input (keys are stored sorted,
-- duplicates dropped, output spaced one way), so jsonb::text is the same for any spelling
-- of the same object. Numbers keep their written form ("1" and "1.0" differ); the
-- validation of billing.upsert_product only accepts plain integers where it wants one.
-- The tenancy and product are part of the hashed text, so equal content of two products or
-- two tenancies never shares a version row (versions are keyed by id alone).
-- Declared IMMUTABLE although jsonb_build_object and convert_to are STABLE in general:
-- for uuid, text and jsonb arguments and the fixed target encoding they always give the
-- same bytes, and billing.product_versions checks its ids with this function.
-- Returns: 64 lowercase hex digits; null when an argument is null.
create or replace function billing._version_id(p_tenancy_id uuid, p_product_id text, p_content jsonb)
returns text
language sql
immutable
strict
set search_path = pg_catalog, pg_temp
as $$
    select encode(sha256(convert_to(
        jsonb_build_object('tenancy_id', p_tenancy_id, 'product_id', p_product_id, 'content', p_content)::text,
        'UTF8')), 'hex');
$$;

comment on function billing._version_id(uuid, text, jsonb) is
    'Content address of a product version: sha256 hex of the canonical jsonb text of {tenancy_id, product_id, content}.';
