vacuum (analyze) {table}
