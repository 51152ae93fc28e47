//! The request path through the gateway: validate what the client sent, decide what the
//! gateway answers itself, and forward everything else to the upstream with its headers
//! rewritten.
//!
//! Checks run cheapest first and before any byte of the body is read: CORS preflight,
//! method, `Host`, header size, path, declared body size. A request that fails one
//! never reaches the upstream. The pure pieces live in `path`, `headers` and `cors`; this
//! module composes them and owns the I/O.

pub mod body;
pub mod checks;
pub mod cors;
pub mod enforce;
pub mod forward;
pub mod forward_auth;
pub mod framing;
pub mod headers;
pub mod identity;
pub mod navigation;
pub mod path;
pub mod pool;
pub mod refusal;
pub mod renewal;
pub mod respond;
pub mod response_body;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, HOST, ORIGIN, REFERRER_POLICY,
    SET_COOKIE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use ipnet::IpNet;
use tracing::Instrument;

use crate::access::{self, CookieOrigins, TokenSource};
use crate::config::Config;
use crate::error::GatewayError;
use crate::proxy::response_body::GatewayBody;
use crate::telemetry::metrics::{Metrics, RefusalReason};
use checks::{AllowedMethods, ServedHosts};
use cors::{Cors, Preflight};
use enforce::{Asked, Enforcer, Explained, Verdict};
use forward::{BodyLimits, Upstream};
use headers::{NoReferrer, RequestIds, SecurityHeaders, StripList, X_REQUEST_ID};
use identity::Identify;
use refusal::Refusal;
use respond::Challenges;
use websocket::WebSockets;

/// What the gateway knows about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The framing guard refused this request's head; the service answers that and nothing
    /// else (the head it was given is a stand-in).
    pub refused: Option<framing::HeadRefusal>,
}

/// Why the gateway could not be assembled from a validated configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("headers: {0}")]
    SecurityHeaders(String),
    #[error("cors: {0}")]
    Cors(String),
    #[error("identity.assertion: needs an asymmetric signing key in tokens.signing_keys")]
    AssertionKey,
}

/// The gateway's own routes (`/auth`), answered in place of forwarding once a request has
/// passed the checks every request passes (method, host, headers, path). The composition
/// root plugs the identity side in here, so that forwarding does not depend on it.
pub trait OwnRoutes: Send + Sync {
    /// Whether the gateway itself answers this normalised path.
    fn serves(&self, path: &str) -> bool;

    /// Answers a request for a path it [`serves`](OwnRoutes::serves); `client_ip` is the
    /// address the gateway trusts for this client.
    fn answer(
        &self,
        request: Request<Incoming>,
        path: String,
        client_ip: std::net::IpAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<GatewayBody>> + Send + '_>>;
}

/// What the access log line says of a request the policy judged (contract 5: every decision
/// is explainable): which policy and rule, the outcome, the path as judged, and for a
/// refusal why. Never the query string or a token.
#[derive(Default)]
struct Judged {
    explained: Option<Explained>,
    /// Normalised, without the query.
    path: Option<String>,
    /// `allow`, or the status the gateway refused with (`401`, `403`, `429`, `302` for a
    /// browser sent to sign in, ...).
    outcome: Option<std::borrow::Cow<'static, str>>,
    /// The refusal's client-facing detail.
    reason: Option<String>,
    /// Why the gateway refused the request itself: `portcullis_refusals_total{reason}` and
    /// the log line's `refusal`. Set where the refusal is decided.
    refused: Option<RefusalReason>,
}

impl Judged {
    fn admitted<T>(&mut self, admitted: &Result<T, Refusal>) {
        match admitted {
            Ok(_) => self.outcome = Some("allow".into()),
            Err(refusal) => {
                self.outcome = Some(refusal.error.status().as_u16().to_string().into());
                self.reason = Some(refusal.error.to_string());
                self.refused = Some(refusal.reason);
            }
        }
    }

    /// Refuses the request before the policy judged it: records why, returns the answer.
    fn refuse(&mut self, reason: RefusalReason, error: GatewayError) -> GatewayError {
        self.refused = Some(reason);
        error
    }
}

/// A request the policy is to judge ([`Gateway::judge`]), once its method, host and path
/// have passed their checks.
struct Judging<'a> {
    method: &'a Method,
    host: &'a HeaderValue,
    /// Normalised path and query.
    target: &'a str,
    /// The caller's headers: its token, cookies, `Accept`, `Origin`.
    headers: &'a HeaderMap,
    client_ip: std::net::IpAddr,
    /// Whether an expired cookie session may be renewed for it.
    may_renew: bool,
}

/// Everything a request needs, built once from the configuration and shared by all
/// connections.
pub struct Gateway {
    /// In configuration order; the first is where a rule without `upstream:` goes.
    upstreams: Vec<(String, Upstream)>,
    own_routes: Arc<dyn OwnRoutes>,
    enforcer: Enforcer,
    security_headers: SecurityHeaders,
    cors: Cors,
    websockets: WebSockets,
    /// The pages that may act on the session cookies: the CSRF check of contract 7.
    cookie_origins: Arc<CookieOrigins>,
    strip_list: StripList,
    /// `WWW-Authenticate` in the configured realm.
    challenges: Challenges,
    /// The caller's identity headers and, when on, the signed assertion.
    identify: Identify,
    request_ids: RequestIds,
    trusted_proxies: Vec<IpNet>,
    methods: AllowedMethods,
    hosts: ServedHosts,
    allow_method_parameter: bool,
    max_header_bytes: usize,
    max_body_bytes: u64,
    max_auth_body_bytes: u64,
    body_read_timeout: Duration,
    allow_path_parameters: bool,
    access_log: bool,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        own_routes: Arc<dyn OwnRoutes>,
        enforcer: Enforcer,
        workers: usize,
    ) -> Result<Gateway, BuildError> {
        let h = &config.headers;
        let security_headers = SecurityHeaders::new(
            &[
                (
                    "strict-transport-security",
                    h.strict_transport_security.as_str(),
                ),
                (
                    "content-security-policy",
                    h.content_security_policy.as_str(),
                ),
                ("x-content-type-options", h.x_content_type_options.as_str()),
                ("x-frame-options", h.x_frame_options.as_str()),
                ("referrer-policy", h.referrer_policy.as_str()),
            ],
            &h.server,
        )
        .map_err(|error| BuildError::SecurityHeaders(error.to_string()))?;
        // Validation already ran this for a loaded config; a Config built in
        // code gets the same rules here.
        let cors = Cors::new(
            &config
                .cors
                .policy()
                .map_err(|error| BuildError::Cors(error.to_string()))?,
        );
        let upstreams = config
            .upstreams
            .iter()
            .map(|upstream| (upstream.name.clone(), Upstream::new(upstream, workers)))
            .collect();
        let cookie_origins = enforcer.access().cookie_origins().clone();
        let identify = if config.identity.assertion {
            let access = enforcer.access();
            Identify::with_assertions(
                access.keys().clone(),
                access.shared_clock().clone(),
                config.identity.assertion_ttl,
                workers,
            )
            .ok_or(BuildError::AssertionKey)?
        } else {
            Identify::headers_only()
        };
        Ok(Gateway {
            upstreams,
            own_routes,
            enforcer,
            security_headers,
            websockets: WebSockets::new(cookie_origins.clone()),
            cookie_origins,
            cors,
            strip_list: StripList::new(&h.strip_request),
            challenges: Challenges::new(&config.realm()),
            identify,
            request_ids: RequestIds::new(process_seed()),
            trusted_proxies: config.server.trusted_proxies.clone(),
            methods: AllowedMethods::new(&config.server.extra_methods),
            hosts: ServedHosts::new(&config.server.served_hosts()),
            allow_method_parameter: config.server.allow_method_parameter,
            max_header_bytes: config.server.max_header_bytes,
            max_body_bytes: config.server.max_body_bytes,
            max_auth_body_bytes: config.server.max_auth_body_bytes as u64,
            body_read_timeout: config.server.body_read_timeout,
            allow_path_parameters: config.server.allow_path_parameters,
            access_log: config.telemetry.access_log,
            metrics,
        })
    }

    /// The headers every response carries, for listeners that answer without forwarding.
    pub fn security_headers(&self) -> &SecurityHeaders {
        &self.security_headers
    }

    /// Answers one request. Never fails: every error becomes the gateway's JSON response.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        conn: ConnectionInfo,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let request_id = self.request_ids.take_or_generate(request.headers());
        let origin = if self.cors.is_enabled() {
            request.headers().get(ORIGIN).cloned()
        } else {
            None
        };
        let span = if self.access_log {
            tracing::info_span!(
                "request",
                method = %request.method(),
                // The path only: a query string may carry secrets and is never logged.
                path = request.uri().path(),
                request_id = request_id.to_str().unwrap_or_default(),
            )
        } else {
            tracing::Span::none()
        };

        // After a request that may switch protocols the framing guard stops reading heads
        // (what follows may be a tunnel's bytes), so a connection that did not switch must
        // not carry another request.
        let may_switch = conn.refused.is_none() && framing::asks_to_switch(&request);
        let mut judged = Judged::default();
        let (mut response, cors_answered) =
            match self.cors.preflight(request.method(), request.headers()) {
                Preflight::NotPreflight => {
                    // Boxed: the routing future is several kilobytes, and held inline it would
                    // make this future (and the connection's, which holds it) as large, and
                    // futures are moved (copied) into place on every request.
                    let routed = Box::pin(self.route(request, conn, &request_id, &mut judged));
                    let response = match routed.instrument(span.clone()).await {
                        Ok(response) => response,
                        // A refusal has said why where it was made (`Judged`).
                        Err(error) => error.into_response(),
                    };
                    (response, false)
                }
                Preflight::Refused => {
                    judged.refused = Some(RefusalReason::Cors);
                    (GatewayError::CorsRefused.into_response(), true)
                }
                Preflight::Allowed(headers) => {
                    let mut response = Response::new(GatewayBody::empty());
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    *response.headers_mut() = headers;
                    (response, true)
                }
            };

        if may_switch && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let no_referrer = response.extensions().get::<NoReferrer>().is_some();
        self.challenges.apply(&mut response);
        let headers = response.headers_mut();
        self.security_headers.apply(headers);
        if no_referrer {
            headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        // A preflight answer already carries exactly the CORS headers it needs.
        if !cors_answered {
            self.cors.apply(origin.as_ref(), headers);
        }
        headers.insert(X_REQUEST_ID.clone(), request_id);

        let latency = started.elapsed();
        let status = response.status().as_u16();
        self.metrics.record_request(status, latency);
        if let Some(explained) = &judged.explained {
            self.metrics.rule_request(explained.rule_name(), status);
        }
        if let Some(reason) = judged.refused {
            self.metrics.refusal(reason);
        }
        if self.access_log {
            let explained = judged.explained.as_ref();
            span.in_scope(|| {
                tracing::info!(
                    status,
                    latency_ms = latency.as_secs_f64() * 1000.0,
                    rule = explained.and_then(Explained::rule_name),
                    outcome = judged.outcome.as_deref(),
                    normalized_path = judged.path.as_deref(),
                    policy_hash = explained.map(Explained::policy_hash),
                    reason = judged.reason.as_deref(),
                    refusal = judged.refused.map(RefusalReason::label),
                    "request finished"
                )
            });
        }
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        conn: ConnectionInfo,
        request_id: &HeaderValue,
        judged: &mut Judged,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        use RefusalReason as R;
        if let Some(refusal) = conn.refused {
            return Err(judged.refuse(R::Malformed, refusal.into()));
        }
        self.check_method(request.method(), judged)?;
        let host = effective_host(&request).map_err(|error| judged.refuse(R::Malformed, error))?;
        self.check_host(&host, judged)?;
        if header_bytes(&request) > self.max_header_bytes {
            return Err(judged.refuse(R::Malformed, GatewayError::HeadersTooLarge));
        }
        checks::check_sensitive_headers(request.headers())
            .map_err(|error| judged.refuse(R::Malformed, error))?;
        let raw_target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let target = self.check_target(raw_target, path::normalize_target, judged)?;
        let path = path_of(&target);
        let client_ip =
            headers::client_ip(conn.peer.ip(), request.headers(), &self.trusted_proxies);
        if forward_auth::asks(raw_target, path) {
            return self
                .forward_auth(&request, conn, &host, raw_target, client_ip, judged)
                .await;
        }
        if self.own_routes.serves(path) {
            // Refused before a byte of the body is read, so that a client declaring a huge
            // body gets its answer at once instead of waiting on a read.
            if declared_length(&request).is_some_and(|length| length > self.max_auth_body_bytes) {
                return Err(judged.refuse(R::Malformed, GatewayError::PayloadTooLarge));
            }
            return Ok(self
                .own_routes
                .answer(request, path.to_string(), client_ip)
                .await);
        }
        if declared_length(&request).is_some_and(|length| length > self.max_body_bytes) {
            return Err(judged.refuse(R::Malformed, GatewayError::PayloadTooLarge));
        }
        let (admitted, set_cookies) = self
            .judge(
                Judging {
                    method: request.method(),
                    host: &host,
                    target: &target,
                    headers: request.headers(),
                    client_ip,
                    may_renew: true,
                },
                judged,
            )
            .await;
        // A WebSocket upgrade is checked once the caller is known: its refusals (a malformed
        // handshake, a cookie from another origin) are the gateway's own, judged as such.
        let admitted = admitted.and_then(|verdict| {
            let upgrade =
                self.websockets
                    .admit(&request, &verdict, &self.enforcer, &self.metrics)?;
            Ok((verdict, upgrade))
        });
        if let Err(refusal) = &admitted {
            judged.admitted::<()>(&Err(refusal.clone()));
        }
        let forwarded = match admitted {
            Ok(admitted) => {
                self.forward(request, admitted, conn, request_id, host, &target)
                    .await
            }
            Err(refusal) => Err(refusal.error),
        };
        if set_cookies.is_empty() {
            return forwarded;
        }
        // A renewed (or refused) session's cookies go on whatever the answer is.
        let mut response = forwarded.unwrap_or_else(GatewayError::into_response);
        let headers = response.headers_mut();
        for cookie in set_cookies {
            headers.append(SET_COOKIE, cookie);
        }
        // It carries tokens: no cache may keep it (contract 4).
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// The method check of contract 6.5 and 6.7, for a request and for the original request
    /// of a forward-auth.
    fn check_method(&self, method: &Method, judged: &mut Judged) -> Result<(), GatewayError> {
        if self.methods.allows(method) {
            Ok(())
        } else {
            Err(judged.refuse(RefusalReason::Method, GatewayError::MethodNotAllowed))
        }
    }

    /// The host check of contract 6.8 (`421`), for a request and for the original request of
    /// a forward-auth.
    fn check_host(&self, host: &HeaderValue, judged: &mut Judged) -> Result<(), GatewayError> {
        if self.hosts.serves(host.to_str().unwrap_or_default()) {
            Ok(())
        } else {
            Err(judged.refuse(RefusalReason::Host, GatewayError::MisdirectedRequest))
        }
    }

    /// The path rules of contract 6.3 and 6.10 by `normalize` (`path::normalize_target` for
    /// a request the gateway forwards, `path::canonical_target` for one it only judges), and
    /// the `_method` parameter of 6.7: the normalised target.
    fn check_target(
        &self,
        raw_target: &str,
        normalize: fn(&str, bool) -> Result<String, path::PathError>,
        judged: &mut Judged,
    ) -> Result<String, GatewayError> {
        let target = normalize(raw_target, self.allow_path_parameters).map_err(|error| {
            judged.refuse(
                RefusalReason::Path,
                GatewayError::InvalidPath(error.message()),
            )
        })?;
        let query = target.split_once('?').map_or("", |(_, query)| query);
        if !self.allow_method_parameter && checks::has_method_override_parameter(query) {
            return Err(judged.refuse(
                RefusalReason::Malformed,
                GatewayError::bad_request("The _method query parameter is not allowed"),
            ));
        }
        Ok(target)
    }

    /// The decision on a request the policy judges, a forwarded one or the original of a
    /// forward-auth: the caller's token (or session cookie, renewed when allowed), the
    /// policy, revocation and rate limit (`Enforcer::decide`), then the CSRF check of a
    /// cookie session. Notes the judgement for the metrics and the access log. Returns the
    /// verdict and the session cookies the answer must set whatever it is.
    async fn judge(
        &self,
        asked: Judging<'_>,
        judged: &mut Judged,
    ) -> (Result<Verdict, Refusal>, Vec<HeaderValue>) {
        let path = path_of(asked.target);
        // What a page of another site made the browser send carries the cookie too: an
        // unsafe request the cookie authenticates must come from an allowed page. Decided
        // here and applied once the caller is known (below); known before enforcement, so
        // that no session is renewed for a request that would then be refused.
        let cross_site =
            access::cross_site_refusal(asked.method, asked.headers, &self.cookie_origins);
        let decided = self
            .enforcer
            .decide(
                &Asked {
                    method: asked.method,
                    host: asked.host.to_str().ok(),
                    path,
                    target: asked.target,
                    headers: asked.headers,
                    client_ip: asked.client_ip,
                    may_renew: asked.may_renew && cross_site.is_none(),
                },
                &self.metrics,
            )
            .await;
        let admitted = match decided.outcome {
            Ok(verdict) => match cross_site {
                Some(refusal) if verdict.token_source == Some(TokenSource::Cookie) => {
                    Err(Refusal::new(RefusalReason::CrossSite, refusal))
                }
                _ => Ok(verdict),
            },
            Err(refusal) => Err(refusal),
        };
        // Always judged: the metrics count by rule and refusal reason; the path is for the
        // access log alone.
        judged.explained = decided.explained;
        judged.admitted(&admitted);
        if self.access_log {
            judged.path = Some(path.to_string());
        }
        (admitted, decided.set_cookies)
    }

    /// Answers a forward-auth (contract 8): the proxy asking whether the request it holds may
    /// pass. That request is read from what the proxy sent (`forward_auth`), believed only
    /// from a trusted proxy, and then checked and judged exactly as if it had come to the
    /// gateway itself: method, host, path, `_method`, then [`Gateway::judge`]. The answer is
    /// `200` with the identity headers the upstream would have been sent, or the refusal a
    /// forwarded request would have got.
    ///
    /// Two things differ, both because the gateway does not forward this request itself: a
    /// path that normalisation would rewrite is refused (`path::canonical_target`), and a
    /// session is never renewed here, since the rotated refresh token would exist only in
    /// cookies on an answer the proxies do not pass on to the browser (losing them ends the
    /// session by reuse detection). A verdict that dropped a valid token because Redis could
    /// not say whether it was revoked is `503`: a proxy never gets a `200` without the
    /// identity the caller presented.
    async fn forward_auth(
        &self,
        request: &Request<Incoming>,
        conn: ConnectionInfo,
        host: &HeaderValue,
        raw_target: &str,
        client_ip: std::net::IpAddr,
        judged: &mut Judged,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        use RefusalReason as R;
        if !headers::is_trusted(conn.peer.ip(), &self.trusted_proxies) {
            return Err(judged.refuse(
                R::Malformed,
                GatewayError::bad_request("Forward-auth answers only a trusted proxy"),
            ));
        }
        let original =
            forward_auth::original_request(request.method(), raw_target, request.headers(), host)
                .map_err(|error| judged.refuse(R::Malformed, error))?;
        self.check_method(&original.method, judged)?;
        self.check_host(&original.host, judged)?;
        let target = self.check_target(&original.target, path::canonical_target, judged)?;
        let (admitted, set_cookies) = self
            .judge(
                Judging {
                    method: &original.method,
                    host: &original.host,
                    target: &target,
                    headers: request.headers(),
                    client_ip,
                    may_renew: false,
                },
                judged,
            )
            .await;
        debug_assert!(set_cookies.is_empty(), "forward-auth renews no session");
        let verdict = admitted.map_err(|refusal| refusal.error)?;
        let refusal = if verdict.revocation_unchecked {
            Some(Refusal::new(
                R::Unavailable,
                GatewayError::Unavailable("Revocation service unavailable"),
            ))
        } else if verdict.token_source == Some(TokenSource::Cookie)
            && forward_auth::asks_websocket(request.headers())
            && !self.cookie_origins.allows(request.headers())
        {
            // The origin check `WebSockets::admit` makes on a forwarded upgrade.
            Some(Refusal::new(
                R::CrossSite,
                GatewayError::Forbidden(websocket::CROSS_ORIGIN_REFUSED.into()),
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            judged.admitted::<()>(&Err(refusal.clone()));
            return Err(refusal.error);
        }
        let mut response = Response::new(GatewayBody::empty());
        let headers = response.headers_mut();
        self.set_identity(headers, &verdict)?;
        if let Some(rate) = &verdict.rate {
            headers::set_rate_headers(headers, rate);
        }
        // It says who the caller is: no cache may keep it.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// Sets the verdict's caller's identity on a request headed upstream: the identity
    /// headers of contract 6.1 and, with `identity.assertion`, the signed assertion for the
    /// verdict's upstream (`proxy::identity`). The one place they are set, so that whatever
    /// carries the identity (a forwarded request, a forward-auth `200`) carries the assertion.
    fn set_identity(&self, headers: &mut HeaderMap, verdict: &Verdict) -> Result<(), GatewayError> {
        let (upstream, _) = self.upstream(verdict.upstream.as_deref());
        self.identify
            .set(headers, verdict.identity.as_deref(), upstream)
    }

    /// Forwards an allowed request as its verdict says, with the WebSocket upgrade admitted
    /// for it, if any.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        (verdict, upgrade): (Verdict, Option<websocket::Upgrade>),
        conn: ConnectionInfo,
        request_id: &HeaderValue,
        host: HeaderValue,
        target: &str,
    ) -> Result<Response<GatewayBody>, GatewayError> {
        // The upgrade was read (in `route`) before hop-by-hop headers go, and those go before
        // the gateway sets its own: a client naming `X-Forwarded-For` in `Connection` must
        // not be able to delete what the gateway adds.
        let headers = request.headers_mut();
        headers::remove_hop_by_hop(headers);
        self.strip_list.strip(headers);
        // The session cookies are the gateway's alone (contract 7): an upstream that logged
        // or echoed them would hand out the browser's session.
        access::remove_gateway_cookies(headers);
        let peer_trusted = headers::is_trusted(conn.peer.ip(), &self.trusted_proxies);
        headers::set_forwarded(headers, conn.peer.ip(), peer_trusted, "https", Some(&host));
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        self.set_identity(headers, &verdict)?;

        let mut response = self
            .upstream(verdict.upstream.as_deref())
            .1
            .forward(
                request,
                target,
                host,
                upgrade,
                BodyLimits {
                    max_bytes: self.max_body_bytes,
                    read_timeout: self.body_read_timeout,
                },
                &self.metrics,
            )
            .await?;
        if let Some(rate) = &verdict.rate {
            headers::set_rate_headers(response.headers_mut(), rate);
        }
        Ok(response)
    }

    /// The upstream a rule names, or the first. Names are checked against the configuration
    /// when the policy is compiled, so an unknown one cannot reach here; the first is the
    /// safe answer if it somehow did.
    fn upstream(&self, name: Option<&str>) -> (&str, &Upstream) {
        let named = name.and_then(|name| self.upstreams.iter().find(|(known, _)| known == name));
        let (name, upstream) = named.unwrap_or(&self.upstreams[0]);
        (name, upstream)
    }

    pub fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }
}

/// The authority the client addressed. HTTP/1.1 needs exactly one `Host`; an absolute-form
/// target or an HTTP/2 `:authority` must agree with it, so that the gateway and the upstream
/// can never disagree about which site was asked for.
fn effective_host(request: &Request<Incoming>) -> Result<HeaderValue, GatewayError> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::bad_request("Duplicate Host header"));
    }
    let authority = request.uri().authority();
    let host = match (host, authority) {
        (Some(host), Some(authority)) => {
            if !host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
            {
                return Err(GatewayError::bad_request(
                    "Host header does not match the request target",
                ));
            }
            host.clone()
        }
        (Some(host), None) => host.clone(),
        (None, Some(authority)) => HeaderValue::from_str(authority.as_str())
            .map_err(|_| GatewayError::bad_request("Invalid Host header"))?,
        (None, None) => return Err(GatewayError::bad_request("Missing Host header")),
    };
    if !is_valid_host(&host) {
        return Err(GatewayError::bad_request("Invalid Host header"));
    }
    Ok(host)
}

/// Whether a `Host` (or `X-Forwarded-Host`) value is one authority, without userinfo.
fn is_valid_host(host: &HeaderValue) -> bool {
    host.to_str()
        .ok()
        .and_then(|text| text.parse::<http::uri::Authority>().ok())
        .is_some_and(|authority| !authority.as_str().contains('@'))
}

/// The path of a normalised target, without its query.
fn path_of(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// Roughly the size of the request head as sent: target plus every header line.
fn header_bytes(request: &Request<Incoming>) -> usize {
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    headers
        + request
            .uri()
            .path_and_query()
            .map_or(1, |pq| pq.as_str().len())
}

fn declared_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A per-process seed for request ids, so two gateway instances behind one load balancer do
/// not hand out the same ids.
fn process_seed() -> u64 {
    let mut seed = [0u8; 8];
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut seed)
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        return nanos ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(seed)
}
