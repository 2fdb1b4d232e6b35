//! One module per scenario. Each has an `Args` (its clap options, `--out` among them) and an
//! `async fn run(database_url, args)` that measures on a fresh database and writes its markdown
//! section.

pub mod append;
pub mod catchup;
pub mod command;
pub mod lag;
pub mod load;
pub mod query;
pub mod scale;
