//! Keys, certificate signing requests and certificate checks. Pure crypto on bytes.

pub(crate) mod csr;
pub(crate) mod der;
pub mod keys;
pub mod pki;
