//! The fake upstream: an offline smtp.163.com, smtp.qq.com and sink. Filled by the
//! "fake-upstream" issue; for now it only re-exports the protocol crate it will drive.

pub use smtp_wire;
