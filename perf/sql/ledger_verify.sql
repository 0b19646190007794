-- Stored ledger points that differ from a fold of the inputs (0 when derived state is right).
select count(*) as differences from billing.verify_ledger()
