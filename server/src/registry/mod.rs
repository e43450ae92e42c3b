//! Device registry and presence: which devices of which users are online, and who watches
//! whom. On the embedded default this is all in this process ([`local`]); a cluster keeps it in
//! Redis behind the same calls.

pub mod local;
