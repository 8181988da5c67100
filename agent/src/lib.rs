//! mesbak-agent: the root-owned daemon that backs up, verifies and restores
//! a Docker-based MES stack, served on the D-Bus system bus. One module per
//! concern; `daemon` ties them together.

pub mod app;
pub mod backup;
pub mod bus;
pub mod catalog;
pub mod checkup;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod fault_point;
pub mod fifo;
pub mod health;
pub mod http;
pub mod ignition;
pub mod import;
pub mod jobs;
pub mod kept;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod offsite;
pub mod persist;
pub mod pipeline;
pub mod pitr;
pub mod postgres;
pub mod preview;
pub mod process;
pub mod recovery;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod state;
pub mod storage;
pub mod trust;
pub mod verify;
