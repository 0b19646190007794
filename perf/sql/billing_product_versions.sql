select count(*) as n from billing.product_versions
