//! Fan-out: how a committed event reaches the sessions that must see it. On the embedded
//! default everything is in one process ([`local`]); the seam stays here so that a cluster bus
//! can take the store's outbox instead.

pub mod local;
