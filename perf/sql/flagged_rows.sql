select count(*) as flagged from {table} where should_update_sequence_id
