//! The S3 blob store: any S3-compatible service (AWS, MinIO, RustFS, SeaweedFS) through
//! `aws-sdk-s3`, signed with SigV4, path-style and with a custom endpoint when configured.
//!
//! Listing is `ListObjectsV2` with `StartAfter` (the [`Listing`] cursor is a key, as for every
//! store), batch deletion is one quiet `DeleteObjects` of at most 1,000 keys. Errors are
//! classified once, in [`classify`]: a missing object is [`BlobError::NotFound`]; a 5xx,
//! throttling, a timeout or a failed connection is retryable; anything else (refused
//! credentials, a missing bucket) is not. The SDK itself retries `blobs.s3_max_attempts` times
//! with backoff before an error reaches the caller.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use futures_util::StreamExt;

use super::store::{
    Blob, BlobError, BlobReader, BlobStore, DEFAULT_CONTENT_TYPE, Listing, MAX_DELETE_BATCH, MAX_LIST_PAGE, ObjectInfo,
    ObjectMeta, check_count, check_key, check_prefix,
};
use crate::config::BlobsConfig;

/// What an [`S3Store`] needs: the `blobs.s3_*` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `http(s)://host:port`; empty for AWS's endpoint of `region`.
    pub endpoint: String,
    /// The endpoint presigned URLs name, when clients reach S3 elsewhere than `endpoint`.
    pub public_endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub force_path_style: bool,
    /// Attempts of one request, the first included.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// The settings of the `[blobs]` section.
    pub fn from_config(blobs: &BlobsConfig) -> Self {
        Self {
            endpoint: blobs.s3_endpoint.trim().to_owned(),
            public_endpoint: blobs.s3_public_endpoint.trim().to_owned(),
            bucket: blobs.s3_bucket.clone(),
            region: blobs.s3_region.clone(),
            access_key: blobs.s3_access_key.clone(),
            secret_key: blobs.s3_secret_key.clone(),
            force_path_style: blobs.s3_force_path_style,
            max_attempts: blobs.s3_max_attempts.max(1),
            connect_timeout: blobs.s3_connect_timeout(),
            attempt_timeout: blobs.s3_attempt_timeout(),
        }
    }
}

/// A blob store over one S3 bucket. Cheap to clone (the client is shared).
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// Signs presigned URLs: the client of `public_endpoint`, or `client` itself.
    presigner: Client,
    bucket: String,
    endpoint: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("endpoint", &self.endpoint).field("bucket", &self.bucket).finish()
    }
}

impl S3Store {
    /// A store over `settings.bucket`; does no IO (the bucket is not checked until a request).
    pub fn new(settings: &S3Settings) -> Self {
        let client = Self::client(settings, &settings.endpoint);
        let presigner = match settings.public_endpoint.as_str() {
            "" => client.clone(),
            public => Self::client(settings, public),
        };
        Self { client, presigner, bucket: settings.bucket.clone(), endpoint: settings.endpoint.clone() }
    }

    /// A client of `endpoint` (empty: AWS's) with the rest of `settings`.
    fn client(settings: &S3Settings, endpoint: &str) -> Client {
        // rustls on ring: no aws-lc C build, and the system's root certificates.
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let credentials =
            Credentials::new(settings.access_key.clone(), settings.secret_key.clone(), None, None, "matyan-config");
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.force_path_style)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.connect_timeout)
                    .operation_attempt_timeout(settings.attempt_timeout)
                    .build(),
            )
            // Checksums only where S3 requires them (DeleteObjects): self-hosted services differ
            // in their support of the newer flexible checksums and aws-chunked uploads.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if !endpoint.is_empty() {
            builder = builder.endpoint_url(endpoint);
        }
        Client::from_conf(builder.build())
    }

    /// The bucket of the store.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket; one that exists and is ours already counts as created. For tests and
    /// benchmarks: the servers never create their bucket (as the reference's do not).
    pub async fn create_bucket(&self) -> Result<(), BlobError> {
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou")) => Ok(()),
            Err(e) => Err(sdk_error(&self.bucket, "CreateBucket", e)),
        }
    }

    /// Sends `GetObject` for `key`, checked first; `get` reads the body whole, `open` streams it.
    async fn get_object(&self, key: &str) -> Result<GetObjectOutput, BlobError> {
        check_key(key)?;
        self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(|e| sdk_error(key, "GetObject", e))
    }
}

/// Maps an SDK error of `operation` on `key` through [`classify`].
fn sdk_error<E, R>(key: &str, operation: &'static str, e: SdkError<E, R>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = e.raw_response().map(HasStatus::status);
    let transport = matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_));
    let code = e.code().map(str::to_owned);
    classify(key, operation, status, code.as_deref(), transport, DisplayErrorContext(&e).to_string())
}

/// The HTTP status of a raw response (a seam so [`sdk_error`] stays generic over the SDK's type).
trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// The error of a failed request: `status` of the answer if there was one, the S3 error `code`,
/// whether it failed in transport (timeout, connection, truncated answer).
pub fn classify(
    key: &str,
    operation: &'static str,
    status: Option<u16>,
    code: Option<&str>,
    transport: bool,
    message: String,
) -> BlobError {
    if matches!(code, Some("NoSuchKey" | "NotFound")) || (status == Some(404) && code != Some("NoSuchBucket")) {
        return BlobError::NotFound { key: key.to_owned() };
    }
    let retryable = transport
        || status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
        || matches!(
            code,
            Some(
                "SlowDown"
                    | "Throttling"
                    | "ThrottlingException"
                    | "RequestTimeout"
                    | "InternalError"
                    | "ServiceUnavailable"
            )
        );
    BlobError::Remote { key: key.to_owned(), operation, message, retryable }
}

/// The metadata S3 answers with an object (`HeadObject`, `GetObject`): a missing length reads as 0,
/// a missing type as [`DEFAULT_CONTENT_TYPE`].
fn object_meta(content_length: Option<i64>, content_type: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        size: content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        content_type: content_type.unwrap_or(DEFAULT_CONTENT_TYPE).to_owned(),
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn get(&self, key: &str) -> Result<Blob, BlobError> {
        let out = self.get_object(key).await?;
        let content_type = out.content_type().unwrap_or(DEFAULT_CONTENT_TYPE).to_owned();
        let bytes = out.body.collect().await.map_err(|e| BlobError::Remote {
            key: key.to_owned(),
            operation: "GetObject",
            message: DisplayErrorContext(&e).to_string(),
            retryable: true,
        })?;
        Ok(Blob { bytes: bytes.into_bytes().to_vec(), content_type })
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, BlobError> {
        check_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(key, "HeadObject", e))?;
        Ok(object_meta(out.content_length(), out.content_type()))
    }

    async fn open(&self, key: &str) -> Result<BlobReader, BlobError> {
        let out = self.get_object(key).await?;
        let meta = object_meta(out.content_length(), out.content_type());
        let owned = key.to_owned();
        // The state is `None` after an error, so the stream ends there.
        let body = futures_util::stream::unfold(Some(out.body), move |body: Option<ByteStream>| {
            let key = owned.clone();
            async move {
                let mut body = body?;
                match body.try_next().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                    Ok(None) => None,
                    Err(e) => {
                        let message = DisplayErrorContext(&e).to_string();
                        Some((Err(BlobError::Remote { key, operation: "GetObject", message, retryable: true }), None))
                    }
                }
            }
        })
        .boxed();
        Ok(BlobReader { meta, body })
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: Option<&str>) -> Result<(), BlobError> {
        check_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type.unwrap_or(DEFAULT_CONTENT_TYPE))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| sdk_error(key, "PutObject", e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match sdk_error(key, "DeleteObject", e) {
                BlobError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, max_keys: usize) -> Result<Listing, BlobError> {
        check_prefix(prefix)?;
        check_count("keys per page", max_keys, MAX_LIST_PAGE, 1)?;
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            // Bounded by MAX_LIST_PAGE just above.
            .max_keys(i32::try_from(max_keys).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| match sdk_error(prefix, "ListObjectsV2", e) {
                // A 404 of a listing is a missing bucket, never a missing object.
                BlobError::NotFound { key } => BlobError::Remote {
                    key,
                    operation: "ListObjectsV2",
                    message: "no such bucket".to_owned(),
                    retryable: false,
                },
                other => other,
            })?;
        let objects: Vec<ObjectInfo> = out
            .contents()
            .iter()
            .filter_map(|o| {
                let size = o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                Some(ObjectInfo { key: o.key()?.to_owned(), size })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) { objects.last().map(|o| o.key.clone()) } else { None };
        Ok(Listing { objects, next })
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), BlobError> {
        check_count("keys per delete", keys.len(), MAX_DELETE_BATCH, 0)?;
        if keys.is_empty() {
            return Ok(());
        }
        let mut objects = Vec::with_capacity(keys.len());
        for key in keys {
            check_key(key)?;
            let id = ObjectIdentifier::builder()
                .key(key)
                .build()
                .map_err(|_| BlobError::InvalidKey { key: key.clone(), reason: "not an object identifier" })?;
            objects.push(id);
        }
        let first = keys[0].as_str();
        let delete =
            Delete::builder().set_objects(Some(objects)).quiet(true).build().map_err(|e| BlobError::Remote {
                key: first.to_owned(),
                operation: "DeleteObjects",
                message: e.to_string(),
                retryable: false,
            })?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk_error(first, "DeleteObjects", e))?;
        // Per-key errors come back in a 200; a missing key is already deleted.
        let failed = out.errors().iter().find(|e| e.code() != Some("NoSuchKey"));
        if let Some(err) = failed {
            let key = err.key().unwrap_or(first);
            let message = format!("{}: {}", err.code().unwrap_or("error"), err.message().unwrap_or(""));
            let retryable = matches!(err.code(), Some("InternalError" | "SlowDown" | "ServiceUnavailable"));
            return Err(BlobError::Remote { key: key.to_owned(), operation: "DeleteObjects", message, retryable });
        }
        Ok(())
    }

    async fn presign_put(&self, key: &str, content_type: &str, expires: Duration) -> Result<Option<String>, BlobError> {
        check_key(key)?;
        let refused = |message: String| BlobError::Remote {
            key: key.to_owned(),
            operation: "PutObject",
            message,
            retryable: false,
        };
        let config = PresigningConfig::expires_in(expires).map_err(|e| refused(e.to_string()))?;
        // Content-Type is signed, so the PUT must send the same one (as the reference's URLs).
        let request = self
            .presigner
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .presigned(config)
            .await
            .map_err(|e| refused(DisplayErrorContext(&e).to_string()))?;
        Ok(Some(request.uri().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: Option<u16>, code: Option<&str>, transport: bool) -> BlobError {
        classify("k", "GetObject", status, code, transport, String::new())
    }

    #[test]
    fn a_missing_key_is_not_found_and_unavailability_or_throttling_is_retryable() {
        assert!(matches!(class(Some(404), Some("NoSuchKey"), false), BlobError::NotFound { .. }));
        assert!(matches!(class(Some(404), None, false), BlobError::NotFound { .. }), "HeadObject's bodiless 404");
        for (status, code) in
            [(Some(503), Some("SlowDown")), (Some(500), None), (Some(429), None), (Some(200), Some("InternalError"))]
        {
            let e = class(status, code, false);
            assert!(e.is_retryable(), "{status:?} {code:?}: {e}");
        }
        assert!(class(None, None, true).is_retryable(), "a timeout or a refused connection");
    }

    #[test]
    fn refused_credentials_and_a_missing_bucket_are_not_retryable() {
        for (status, code) in [
            (Some(403), Some("SignatureDoesNotMatch")),
            (Some(403), Some("InvalidAccessKeyId")),
            (Some(404), Some("NoSuchBucket")),
            (Some(400), None),
        ] {
            let e = class(status, code, false);
            assert!(matches!(e, BlobError::Remote { retryable: false, .. }), "{status:?} {code:?}: {e}");
        }
    }

    #[test]
    fn settings_do_not_show_the_secret_key() {
        let mut config = crate::config::Config::from_toml_str("t", "").unwrap();
        config.blobs.s3_secret_key = "hunter2".to_owned();
        let settings = S3Settings::from_config(&config.blobs);
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert!(!format!("{:?}", config.blobs).contains("hunter2"));
    }
}
