//! Examples for the framework: [`bank`] (an account with no overdraft under concurrent
//! withdrawals).

pub mod bank;
