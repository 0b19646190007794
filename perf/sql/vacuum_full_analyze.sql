vacuum (full, analyze) {table}
