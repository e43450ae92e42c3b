//! Fake push providers for tests: real HTTP servers on 127.0.0.1 behind TLS signed by a test CA
//! ([`tls`]), recording every request and answering as scripted ([`server`]), with the
//! providers' own checks (FCM's OAuth2 assertion and bearer token, APNs' provider JWT and
//! headers) so a client that gets the protocol wrong fails the test. Beside them, a fake OpenID
//! Connect identity provider ([`idp`]): its key set and the keys that sign its tokens.

pub mod apns;
pub mod fcm;
pub mod idp;
pub mod server;
pub mod tls;
pub mod webhook;
pub mod webpush;
