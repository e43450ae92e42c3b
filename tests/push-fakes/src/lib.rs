//! Fake push providers for tests: real HTTP servers on 127.0.0.1 behind TLS signed by a test CA
//! ([`tls`]), recording every request and answering as scripted ([`server`]), with the
//! providers' own checks (FCM's OAuth2 assertion and bearer token, APNs' provider JWT and
//! headers) so a client that gets the protocol wrong fails the test.

pub mod apns;
pub mod fcm;
pub mod server;
pub mod tls;
pub mod webhook;
pub mod webpush;
