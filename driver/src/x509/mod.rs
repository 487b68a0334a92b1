//! Keys, certificate signing requests and certificate checks. Pure crypto on bytes.

pub mod keys;
pub mod pki;
