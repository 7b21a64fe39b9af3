//! No library: the tests are the crate (see README.md).
