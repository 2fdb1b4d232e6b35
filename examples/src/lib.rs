//! Examples for the framework: [`deal`] (the CRM deal case end to end: aggregate, upcaster,
//! read model, workload generator) and [`bank`] (an account with no overdraft under concurrent
//! withdrawals).

pub mod bank;
pub mod deal;
