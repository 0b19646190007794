-- What a sequencer run leaves behind: every row stamped and unflagged, so the next
-- application update of a row fires _100_pyglue_flag_change.
update {table} set sequence_id = nextval('pyglue.change_sequence'), should_update_sequence_id = false
