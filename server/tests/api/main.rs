//! Integration tests: the real server against real PostgreSQL, one database per test.
//! All modules compile into this one binary.

mod accounts;
mod advisor;
mod analytics;
mod bad_input;
mod browser;
mod cart;
mod checkout;
mod cluster;
mod dashboard;
mod faults;
mod health;
mod helpers;
mod logs;
mod models;
mod optimizer;
mod orders;
mod products;
mod replicas;
mod search;
