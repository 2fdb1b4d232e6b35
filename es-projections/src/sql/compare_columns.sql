-- A table's columns and their types in order (NULL when the table does not exist): two
-- generations' rows are compared only when these are the same.
SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position)
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1
