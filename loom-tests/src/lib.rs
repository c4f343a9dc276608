//! Loom models of the shard protocol live in `tests/`; this crate has no code of its own.
