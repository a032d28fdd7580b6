//! The length of every id and name a request carries into a storage key (run ids, entity and note
//! ids, experiment and tag names): checked before any key is built, so an oversized one is a 400
//! naming the field and the limit, and nothing is read or written for it.
//!
//! The limit is the ingestion path's [`MAX_KEY_PART_BYTES`]: no run, tag or experiment with a
//! longer id or name can be stored, and two such parts plus the tuple overhead fit a key.
//! Path parameters are checked for every route by [`path_params`]; handlers check the body fields
//! that become key parts with [`key_part`].

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

pub use crate::ingest::message::MAX_KEY_PART_BYTES;

use super::ApiError;

/// Refuses `value` of `field` when it is longer than a key part may be.
pub fn key_part(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > MAX_KEY_PART_BYTES {
        return Err(ApiError::TooLong { field: field.to_owned(), len: value.len(), limit: MAX_KEY_PART_BYTES });
    }
    Ok(())
}

/// Answers 400 to a request with an oversized path parameter (`run_id`, `id`, `tag_id`,
/// `note_id`), before its handler runs. A path that does not decode is left to the handler's own
/// extractor, which answers as before.
pub async fn path_params(params: Result<RawPathParams, RawPathParamsRejection>, req: Request, next: Next) -> Response {
    if let Ok(params) = params
        && let Some(err) = params.iter().find_map(|(name, value)| key_part(name, value).err())
    {
        return err.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_part_past_the_limit_is_a_400_naming_the_field_and_the_limit() {
        assert!(key_part("name", &"n".repeat(MAX_KEY_PART_BYTES)).is_ok());
        let err = key_part("tag_name", &"n".repeat(MAX_KEY_PART_BYTES + 1)).unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
        assert_eq!(err.message(), format!("tag_name is too long: 4001 bytes, the limit is {MAX_KEY_PART_BYTES}"));
    }
}
