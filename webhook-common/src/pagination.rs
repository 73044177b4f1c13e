//! One pagination rule for every list route of both services: a `limit` from 1 to
//! [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]) and an opaque `cursor`, the `next_cursor` of the
//! previous page. A `limit` that is not such a number, or a cursor this API did not issue, is a
//! 400 naming the parameter ([`ParamError`], code `invalid_query`), never a 422: the request
//! is malformed, not a well-formed body with invalid fields.
//!
//! Path parameters follow the same rule: an id that is not a UUID is a 400 naming the
//! parameter (code `invalid_path`, see [`crate::request::AppPath`]), and 404 is kept for a
//! well-formed id that names nothing. A client can then tell a mangled id (a bug on its side)
//! from a resource that does not exist (or no longer does).

use serde::Deserialize;

use crate::error_body::ParamError;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 200;

/// The query of a list route: `?cursor=&limit=`. Both are kept as text, so that a bad value is
/// answered by [`PageQuery::limit`] and [`PageQuery::cursor`] with a 400 naming it rather than
/// by the query extractor.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct PageQuery {
    /// `next_cursor` of the previous page; from the start if absent.
    pub cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[cfg_attr(
        feature = "openapi",
        param(value_type = Option<u32>, minimum = 1, maximum = 200)
    )]
    pub limit: Option<String>,
}

impl PageQuery {
    /// The page size (see [`limit`]).
    pub fn limit(&self) -> Result<u32, ParamError> {
        limit(self.limit.as_deref())
    }

    /// The cursor, `None` from the start (see [`cursor`]).
    pub fn cursor<C>(
        &self,
        decode: impl FnOnce(&str) -> Option<C>,
    ) -> Result<Option<C>, ParamError> {
        cursor("cursor", self.cursor.as_deref(), decode)
    }
}

/// A `limit` query parameter: absent or empty is [`DEFAULT_LIMIT`]; otherwise a whole number
/// from 1 to [`MAX_LIMIT`].
pub fn limit(raw: Option<&str>) -> Result<u32, ParamError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ParamError::query(
            "limit",
            format!("must be a whole number from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// A cursor query parameter called `name`: absent or empty means "from the start"; otherwise
/// `decode` must accept it (only cursors this API issued are valid).
pub fn cursor<C>(
    name: &str,
    raw: Option<&str>,
    decode: impl FnOnce(&str) -> Option<C>,
) -> Result<Option<C>, ParamError> {
    raw.filter(|r| !r.is_empty())
        .map(|r| {
            decode(r).ok_or_else(|| {
                ParamError::query(
                    name,
                    "is not a cursor this API issued (pass `next_cursor` back as it came)",
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(Some("")), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(Some("1")), Ok(1));
        assert_eq!(limit(Some("200")), Ok(MAX_LIMIT));
        for bad in ["0", "201", "-1", "abc", "1.5", " 3"] {
            let e = limit(Some(bad)).unwrap_err();
            assert_eq!(e.name.as_deref(), Some("limit"), "{bad}");
            assert_eq!(e.code(), "invalid_query");
            assert!(e.body().error.fields.contains_key("limit"));
        }
    }

    #[test]
    fn a_cursor_that_does_not_decode_is_named() {
        let decode = |s: &str| s.parse::<u64>().ok();
        assert_eq!(cursor("after", None, decode), Ok(None));
        assert_eq!(cursor("after", Some(""), decode), Ok(None));
        assert_eq!(cursor("after", Some("7"), decode), Ok(Some(7)));
        let e = cursor("after", Some("zzz"), decode).unwrap_err();
        assert!(e.message().starts_with("query parameter `after` "), "{e}");
    }
}
