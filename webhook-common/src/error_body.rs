//! The JSON body of every HTTP error in this project:
//! `{"error": {"code": "...", "message": "...", "fields": {...}}}`.
//!
//! `code` is stable and machine-readable; `message` is a sentence for a person; `fields` (only on
//! validation errors) maps a field path to what is wrong with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use validator::{ValidationErrors, ValidationErrorsKind};

/// The outer object: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_payload`.
    pub code: String,
    /// Human-readable explanation of what is wrong and, where it helps, what to do.
    pub message: String,
    /// Per-field messages for validation errors, keyed by field path (`data.quantity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Vec<String>>,
}

impl ErrorBody {
    /// An error body without field details.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                fields: BTreeMap::new(),
            },
        }
    }

    /// An error body with per-field messages.
    pub fn with_fields(
        code: impl Into<String>,
        message: impl Into<String>,
        fields: BTreeMap<String, Vec<String>>,
    ) -> Self {
        let mut body = ErrorBody::new(code, message);
        body.error.fields = fields;
        body
    }
}

/// Flattens `validator` errors into `field path -> messages`, nested structs joined with `.`
/// and list items as `field[i]`.
pub fn field_errors(errors: &ValidationErrors) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    collect(errors, "", &mut out);
    out
}

fn collect(errors: &ValidationErrors, prefix: &str, out: &mut BTreeMap<String, Vec<String>>) {
    for (field, kind) in errors.errors() {
        let path = if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                let messages = out.entry(path).or_default();
                messages.extend(list.iter().map(|e| match &e.message {
                    Some(m) => m.to_string(),
                    None => format!("failed the `{}` check", e.code),
                }));
            }
            ValidationErrorsKind::Struct(inner) => collect(inner, &path, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    collect(inner, &format!("{path}[{index}]"), out);
                }
            }
        }
    }
}
