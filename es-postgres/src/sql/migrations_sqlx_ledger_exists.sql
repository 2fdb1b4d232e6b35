-- Whether the database has sqlx's shared migration table (an application's, or this crate's
-- from before it kept a ledger of its own).
SELECT to_regclass('_sqlx_migrations') IS NOT NULL
