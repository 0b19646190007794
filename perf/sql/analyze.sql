-- Statistics of one table now (after a rolled-back load: of its dead rows only, as autovacuum leaves them).
analyze {table}
