//! `GET /gateway/bot` through twilight-http: the shard count, the gateway
//! URL and the identify limits.

use std::time::Duration;

use crate::config::PoolConfig;
use crate::error::Error;

/// What `GET /gateway/bot` says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayInfo {
    /// The gateway URL.
    pub url: String,
    /// The recommended shard count.
    pub shards: u32,
    /// Identify buckets (`session_start_limit.max_concurrency`).
    pub max_concurrency: u32,
    /// Identifies left before the reset.
    pub remaining: u32,
    /// When the identify count resets.
    pub reset_after: Duration,
    /// Identifies per day.
    pub total: u32,
}

impl GatewayInfo {
    /// Asks `GET /gateway/bot` where `config` says (its token, `api_base`
    /// or `twilight_http_proxy`), as [`Pool::start`](crate::Pool::start)
    /// does: for a shared identify queue that needs the limits first.
    ///
    /// # Errors
    ///
    /// A wrong REST base, a refused token, or an answer that is not
    /// Discord's.
    pub async fn fetch(config: &PoolConfig) -> Result<Self, Error> {
        gateway_bot(config).await
    }
}

/// Where twilight-http should send requests: `host[:port]` and whether over
/// plain HTTP, or `None` for Discord.
pub(crate) fn rest_proxy(config: &PoolConfig) -> Result<Option<(String, bool)>, Error> {
    if let Some(base) = &config.api_base {
        let (use_http, rest) = if let Some(rest) = base.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = base.strip_prefix("https://") {
            (false, rest)
        } else {
            return Err(Error::config(format!(
                "api_base `{base}`: expected an http:// or https:// URL, such as http://127.0.0.1:9001/api"
            )));
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || path.trim_end_matches('/') != "api" {
            return Err(Error::config(format!(
                "api_base `{base}`: expected scheme://host[:port]/api (requests go to /api/v10/…)"
            )));
        }
        return Ok(Some((host.to_owned(), use_http)));
    }
    if let Some(proxy) = &config.twilight_http_proxy {
        if proxy.is_empty() || proxy.contains('/') {
            return Err(Error::config(format!(
                "twilight_http_proxy `{proxy}`: expected ip:port, such as 127.0.0.1:8080"
            )));
        }
        return Ok(Some((proxy.clone(), true)));
    }
    Ok(None)
}

/// Asks `GET /gateway/bot`.
pub(crate) async fn gateway_bot(config: &PoolConfig) -> Result<GatewayInfo, Error> {
    let mut builder = twilight_http::Client::builder()
        .token(config.token.expose().to_owned())
        .timeout(Duration::from_secs(10));
    if let Some((host, use_http)) = rest_proxy(config)? {
        builder = builder.proxy(host, use_http);
    }
    let client = builder.build();
    let response = client
        .gateway()
        .authed()
        .await
        .map_err(|e| Error::rest(describe(&e)))?;
    let info = response
        .model()
        .await
        .map_err(|e| Error::rest(format!("the body is not what Discord sends: {e}")))?;
    Ok(GatewayInfo {
        url: info.url,
        shards: info.shards,
        max_concurrency: u32::from(info.session_start_limit.max_concurrency),
        remaining: info.session_start_limit.remaining,
        reset_after: Duration::from_millis(info.session_start_limit.reset_after),
        total: info.session_start_limit.total,
    })
}

fn describe(error: &twilight_http::Error) -> String {
    match error.kind() {
        twilight_http::error::ErrorType::Unauthorized => {
            "401 Unauthorized: the token is wrong".to_owned()
        }
        twilight_http::error::ErrorType::Response { status, .. } => {
            format!("the server answered {status}")
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api_base: Option<&str>, proxy: Option<&str>) -> PoolConfig {
        let mut config = PoolConfig::new("t", 0);
        config.api_base = api_base.map(str::to_owned);
        config.twilight_http_proxy = proxy.map(str::to_owned);
        config
    }

    #[test]
    fn api_base_wins_and_names_what_is_wrong() {
        let ok = |base, proxy| rest_proxy(&config(base, proxy)).unwrap();
        assert_eq!(ok(None, None), None);
        assert_eq!(
            ok(Some("http://127.0.0.1:9001/api"), Some("10.0.0.1:80")),
            Some(("127.0.0.1:9001".to_owned(), true))
        );
        assert_eq!(
            ok(Some("https://rest.example/api/"), None),
            Some(("rest.example".to_owned(), false))
        );
        assert_eq!(
            ok(None, Some("10.0.0.1:80")),
            Some(("10.0.0.1:80".to_owned(), true))
        );
        for (base, proxy) in [
            (Some("127.0.0.1:9001/api"), None),
            (Some("http://127.0.0.1:9001"), None),
            (Some("http://127.0.0.1:9001/v2"), None),
            (None, Some("http://10.0.0.1:80")),
        ] {
            let error = rest_proxy(&config(base, proxy)).unwrap_err().to_string();
            let named = base.or(proxy).unwrap();
            assert!(error.contains(named), "{error}");
        }
    }
}
