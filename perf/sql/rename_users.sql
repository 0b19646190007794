-- The application's update of synced rows: on a tracked table the trigger re-flags each.
update {table} set display_name = display_name || ' (renamed)'
