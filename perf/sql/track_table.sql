select pyglue.track_table(%(table)s::regclass)
