-- A table shaped like app.users before tracking: LIKE copies the sequence columns that
-- tracking added, so drop them again (their indexes go with them). All variants of the
-- trigger benchmark are made this way, so all carry the same two dropped attributes.
create table {table} (like app.users including defaults including indexes);
alter table {table} drop column sequence_id, drop column should_update_sequence_id
