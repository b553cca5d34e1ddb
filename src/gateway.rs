//! (being written)
/// The assembled gateway.
pub struct Gateway;
