-- Flag every row again. The _100_pyglue_flag_change trigger does not fire: its WHEN
-- clause skips rows whose new flag is already true.
update {table} set should_update_sequence_id = true
