//! What a volume asks for, parsed once at the edge: the typed request, the volume-attribute
//! parser, the operator's limits, the volume's id and target path. Pure data and validation;
//! nothing here touches a file.

pub mod attrs;
pub(crate) mod limits;
pub mod request;
pub(crate) mod subject;
pub(crate) mod volume;
