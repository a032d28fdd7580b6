//! JSON request bodies: what does not parse, or has the wrong shape, is a 422 (FastAPI's answer),
//! never a 500.

use serde::de::DeserializeOwned;

use super::ApiError;

/// Pydantic's message for a missing body.
const REQUIRED: &str = "Field required";

fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Validation(REQUIRED.into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))
}

/// Parses a body that must be a JSON object into `T` (unknown keys are ignored by `T`).
pub fn object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = parse_value(bytes)?;
    if !value.is_object() {
        return Err(ApiError::Validation("Input should be a valid dictionary or object".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))
}

/// Parses a body that must be a JSON array into a list of `T`.
pub fn list<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, ApiError> {
    let value = parse_value(bytes)?;
    if !value.is_array() {
        return Err(ApiError::Validation("Input should be a valid list".into()));
    }
    serde_json::from_value(value).map_err(|e| ApiError::Validation(format!("Invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Named {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn wrong_shapes_are_422_with_a_message() {
        for bad in [&b""[..], b"  ", b"{", b"[]", b"{\"name\": 3}", b"{}"] {
            let err = object::<Named>(bad).unwrap_err();
            assert_eq!(err.status().as_u16(), 422, "{}", String::from_utf8_lossy(bad));
            assert!(!err.message().is_empty());
        }
        assert!(object::<Named>(b"{\"name\":\"x\",\"extra\":1}").is_ok());
        assert_eq!(list::<String>(b"{}").unwrap_err().message(), "Input should be a valid list");
        assert_eq!(list::<String>(b"[1]").unwrap_err().status().as_u16(), 422);
        assert_eq!(list::<String>(b"[\"a\"]").ok(), Some(vec!["a".to_owned()]));
        assert_eq!(list::<String>(b"").unwrap_err().message(), "Field required");
    }
}
