//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: invalid_request_error, authentication_error, not_found_error, ...
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }
    /// 400: malformed JSON, a missing or invalid field, an unknown role, an out-of-range parameter.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// 400 naming `param`.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::invalid(format!("{param}: {}", message.into()));
        e.param = Some(param.to_string());
        e
    }
    pub fn unsupported(param: &str, what: &str) -> Self {
        let mut e = Self::field(param, format!("{what} is not yet supported by this server"));
        e.code = Some("unsupported_parameter");
        e
    }
    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid or missing API key (send `Authorization: Bearer KEY`)",
        );
        e.code = Some("invalid_api_key");
        e
    }
    pub fn model_not_found(model: &str, served: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("the model `{model}` does not exist (this server serves `{served}`)"),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }
    pub fn not_found(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", format!("no route for {path}"))
    }
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method not allowed on this route")
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("request body over {limit} bytes"))
    }
    pub fn queue_full(cap: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("the server is busy: {cap} requests are already waiting; retry later"),
        );
        e.code = Some("queue_full");
        e
    }
    pub fn timeout(secs: f64) -> Self {
        let mut e = Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            format!("the request ran past the server's time limit of {secs} s"),
        );
        e.code = Some("timeout");
        e
    }
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    /// A library error from preparing a request: bad prompt or parameter (400), prompt over the context (400).
    pub fn from_model(e: crate::Error) -> Self {
        match e {
            crate::Error::InvalidArgument(m) => Self::invalid(m),
            crate::Error::ContextFull(m) => {
                let mut e = Self::invalid(format!("context length exceeded: {m}"));
                e.code = Some("context_length_exceeded");
                e
            }
            other => Self::internal(other.to_string()),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
