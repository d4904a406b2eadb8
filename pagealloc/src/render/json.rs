//! Machine-readable output. The field names are public: extend, never rename.
use serde::Serialize;

pub fn to_string<T: Serialize>(document: &T) -> String {
    serde_json::to_string_pretty(document).expect("plain data always serialises")
}
