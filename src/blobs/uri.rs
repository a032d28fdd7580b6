//! Blob URIs (spec `api.md` §7.1): the opaque token an image or audio item carries and the client
//! passes back to `POST runs/{images,audios}/get-batch/`.
//!
//! Minted exactly as the reference mints them, so URIs from a Python backend with the same
//! `BLOB_URI_SECRET` decode here and ours decode there: a Fernet token (URL-safe base64 with
//! padding of `0x80 ‖ u64 BE time ‖ IV ‖ AES-128-CBC(PKCS7) ‖ HMAC-SHA256`) over the UTF-8
//! plaintext `<run>__seqs__<ctx_id>__<seq>__<step>__<index>`. Decoding splits at the first
//! `__seqs__`, takes the last two `__` fields as step and index, and splits the rest at its first
//! `__` into context id and sequence name, so sequence names may contain `__`. No TTL is enforced.

use std::fmt;

use thiserror::Error;

/// The separator between the run hash and the rest of the plaintext.
const SEQS: &str = "__seqs__";
/// The separator between the other fields.
const SEP: &str = "__";

/// Why a secret or a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    /// The secret is not URL-safe base64 of 32 bytes.
    #[error("blob uri secret must be url-safe base64 of 32 bytes (a fernet key)")]
    BadSecret,
    /// The token is not a Fernet token of this key (forged, truncated or minted with another key).
    #[error("blob uri does not decrypt with this key")]
    Undecryptable,
    /// The token decrypts, but its plaintext is not `<run>__seqs__<ctx>__<seq>__<step>__<index>`.
    #[error("blob uri plaintext is malformed: {0}")]
    Malformed(String),
}

/// Where one image or audio item lives: the five fields of a blob URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobUri {
    /// Run hash.
    pub run: String,
    /// `context_to_id` of the sequence's context.
    pub ctx_id: u32,
    /// Sequence name.
    pub seq: String,
    /// Step.
    pub step: i64,
    /// Position of the item in the step's stored list (0 for a step holding one item).
    pub index: i64,
}

impl BlobUri {
    /// The reference's plaintext, `<run>__seqs__<ctx_id>__<seq>__<step>__<index>`.
    pub fn plaintext(&self) -> String {
        format!("{}{SEQS}{}{SEP}{}{SEP}{}{SEP}{}", self.run, self.ctx_id, self.seq, self.step, self.index)
    }

    /// Parses a plaintext the way the reference's `decode_uri` does.
    pub fn parse(plaintext: &str) -> Result<Self, UriError> {
        let malformed = |what: &str| UriError::Malformed(what.to_owned());
        let (run, rest) = plaintext.split_once(SEQS).ok_or_else(|| malformed("no __seqs__"))?;
        let mut tail = rest.rsplitn(3, SEP);
        let (Some(index), Some(step), Some(ctx_and_seq)) = (tail.next(), tail.next(), tail.next()) else {
            return Err(malformed("fewer than four fields after __seqs__"));
        };
        let (ctx_id, seq) = ctx_and_seq.split_once(SEP).ok_or_else(|| malformed("no sequence name"))?;
        Ok(BlobUri {
            run: run.to_owned(),
            ctx_id: ctx_id.parse().map_err(|_| malformed("context id"))?,
            seq: seq.to_owned(),
            step: step.parse().map_err(|_| malformed("step"))?,
            index: index.parse().map_err(|_| malformed("index"))?,
        })
    }
}

/// Checks that `secret` is a usable key without keeping it (for configuration validation).
pub fn check_secret(secret: &str) -> Result<(), UriError> {
    UriCodec::new(secret).map(|_| ())
}

/// Mints and decodes blob URIs with one key. Cheap to share; `Debug` does not show the key.
#[derive(Clone)]
pub struct UriCodec {
    fernet: fernet::Fernet,
}

impl fmt::Debug for UriCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UriCodec(<key>)")
    }
}

impl UriCodec {
    /// A codec over `secret`, URL-safe base64 of 32 bytes (bytes 0–15 sign, 16–31 encrypt).
    pub fn new(secret: &str) -> Result<Self, UriError> {
        fernet::Fernet::new(secret.trim()).map(|fernet| Self { fernet }).ok_or(UriError::BadSecret)
    }

    /// A fresh token for `uri`: a new IV and timestamp each time, so two mints differ.
    pub fn mint(&self, uri: &BlobUri) -> String {
        self.fernet.encrypt(uri.plaintext().as_bytes())
    }

    /// The plaintext of a token minted with this key.
    pub fn decrypt(&self, token: &str) -> Result<Vec<u8>, UriError> {
        self.fernet.decrypt(token).map_err(|_| UriError::Undecryptable)
    }

    /// The five fields of a token minted with this key.
    pub fn decode(&self, token: &str) -> Result<BlobUri, UriError> {
        let plaintext = self.decrypt(token)?;
        let text = std::str::from_utf8(&plaintext).map_err(|_| UriError::Malformed("not utf-8".to_owned()))?;
        BlobUri::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// The reference's development key (`BLOB_URI_SECRET`'s default).
    const DEV_KEY: &str = "Juw5-cLlemQI2jAWvceOUB3_CrVfBmI99YIzkpGUXR4=";

    fn uri(run: &str, ctx_id: u32, seq: &str, step: i64, index: i64) -> BlobUri {
        BlobUri { run: run.to_owned(), ctx_id, seq: seq.to_owned(), step, index }
    }

    #[test]
    fn a_minted_uri_decodes_back_to_its_five_fields_and_runs_differ() {
        let codec = UriCodec::new(DEV_KEY).unwrap();
        let original = uri("abc", 42, "audios", 10, 3);
        let token = codec.mint(&original);
        assert_eq!(codec.decode(&token).unwrap(), original);
        let other = codec.mint(&uri("abd", 42, "audios", 10, 3));
        assert_ne!(token, other);
        assert_eq!(codec.decode(&other).unwrap().run, "abd");
        // Fresh IV and timestamp: the same fields mint a different token that decodes the same.
        let again = codec.mint(&original);
        assert_ne!(token, again);
        assert_eq!(codec.decode(&again).unwrap(), original);
    }

    #[test]
    fn the_plaintext_is_the_references_byte_for_byte() {
        let codec = UriCodec::new(DEV_KEY).unwrap();
        let token = codec.mint(&uri("abc", 42, "audios", 10, 3));
        assert_eq!(codec.decrypt(&token).unwrap(), b"abc__seqs__42__audios__10__3");
    }

    #[test]
    fn tokens_have_the_fernet_layout() {
        let codec = UriCodec::new(DEV_KEY).unwrap();
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let token = codec.mint(&uri("abc", 42, "audios", 10, 3));
        assert!(token.starts_with("gAAAAA"), "{token}");
        let raw = base64::engine::general_purpose::URL_SAFE.decode(&token).expect("url-safe base64 with padding");
        assert_eq!(raw[0], 0x80, "version byte");
        let ts = u64::from_be_bytes(raw[1..9].try_into().unwrap());
        assert!(ts >= before && ts <= before + 5, "big-endian unix time");
        // 1 + 8 + 16 (IV) + 32 (28 plaintext bytes padded to two blocks) + 32 (HMAC).
        assert_eq!(raw.len(), 1 + 8 + 16 + 32 + 32);
    }

    /// Minted by Python `cryptography` 48 as the reference mints (`Fernet(DEV_KEY)`), for run
    /// "abc", ctx 42, "audios", step 10, index 3, at 2025-01-01 (`encrypt_at_time`, so that a
    /// machine whose clock is behind does not see a token from the future).
    const PYTHON_TOKEN: &str = "gAAAAABndIWA-QZYQdgu14BK3QqVYOYjQ7X-Ybzd_H9LL5Z8XmUfXDzq0Z3sX4tGVzHl2x60e83uRjpu2fw-TWIKh6-ubuTLzqA0z9QGh1dMNui_sp3VWbc=";

    #[test]
    fn a_uri_minted_by_the_python_backend_decodes() {
        let codec = UriCodec::new(DEV_KEY).unwrap();
        assert_eq!(codec.decode(PYTHON_TOKEN).unwrap(), uri("abc", 42, "audios", 10, 3));
    }

    #[test]
    fn sequence_names_may_contain_the_separator() {
        for name in ["a__b", "__x", "y__", "____", "s__1__2"] {
            let plain = uri("r", 7, name, 12, 4);
            assert_eq!(BlobUri::parse(&plain.plaintext()).unwrap(), plain, "{name}");
        }
        // The run hash ends at the first `__seqs__`, as in the reference; a hash containing it
        // does not round-trip (run hashes are hex, so this never happens).
        assert!(BlobUri::parse(&uri("r__seqs__x", 7, "s", 1, 0).plaintext()).is_err());
        assert_eq!(BlobUri::parse("r__seqs__7__s__seqs__1__0").unwrap().seq, "s__seqs");
    }

    #[test]
    fn malformed_plaintexts_and_foreign_tokens_are_refused() {
        for bad in ["abc", "abc__seqs__", "abc__seqs__1__2", "abc__seqs__x__s__1__2", "abc__seqs__1__s__x__2"] {
            assert!(matches!(BlobUri::parse(bad), Err(UriError::Malformed(_))), "{bad}");
        }
        let codec = UriCodec::new(DEV_KEY).unwrap();
        for bad in ["invalid-uri", "", "gAAAAA", &PYTHON_TOKEN[..PYTHON_TOKEN.len() - 8]] {
            assert_eq!(codec.decode(bad), Err(UriError::Undecryptable), "{bad}");
        }
        let other = UriCodec::new(&base64::engine::general_purpose::URL_SAFE.encode([7u8; 32])).unwrap();
        assert_eq!(other.decode(PYTHON_TOKEN), Err(UriError::Undecryptable));
    }

    #[test]
    fn secrets_must_be_32_bytes_of_url_safe_base64() {
        assert!(check_secret(DEV_KEY).is_ok());
        let b64 = base64::engine::general_purpose::URL_SAFE;
        for bad in [String::new(), "not base64!".to_owned(), b64.encode([1u8; 16]), b64.encode([1u8; 33])] {
            assert_eq!(check_secret(&bad), Err(UriError::BadSecret), "{bad:?}");
        }
        assert!(!format!("{:?}", UriCodec::new(DEV_KEY).unwrap()).contains("Juw5"));
    }
}
