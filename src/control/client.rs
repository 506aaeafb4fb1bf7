//! A client of the control API, for `interlocking ctl`, `interlocking up`
//! and tests: plain HTTP on the configured listener, with the bearer token
//! when one is given.
//!
//! Owns requests and their errors only (`reqwest` without TLS: the API is
//! served on loopback, or behind whatever TLS the operator puts in front).

use std::time::Duration;

use serde_json::Value;

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer (refused, timed out).
    #[error("control API at {0} unreachable: {1}")]
    Unreachable(String, String),
    /// An answer with an error status.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error message of the body, or the body.
        message: String,
    },
    /// A body that is not JSON.
    #[error("bad answer: {0}")]
    Body(String),
}

/// A control API client.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `addr` (`host:port` or `http://host:port`),
    /// each request bounded by `timeout`.
    pub fn new(addr: &str, token: Option<String>, timeout: Duration) -> Self {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self { base, token, http }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    fn check(status: u16, body: Value) -> Result<Value, ClientError> {
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        Err(ClientError::Status { status, message })
    }

    /// `GET path`, failing on an error status.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let (s, b) = self.get_any(path).await?;
        Self::check(s, b)
    }

    /// `GET path`, with the status whatever it is (`/readyz` answers 503
    /// with a body).
    pub async fn get_any(&self, path: &str) -> Result<(u16, Value), ClientError> {
        self.answer(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `GET path` as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (s, b) = self.get_any(path).await?;
        match Self::check(s, b)? {
            Value::String(t) => Ok(t),
            other => Ok(other.to_string()),
        }
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let (s, b) = self
            .answer(self.http.post(format!("{}{path}", self.base)).json(body))
            .await?;
        Self::check(s, b)
    }
}
