//! HTTP routing: the WebSocket upgrade, status, publish API, metrics,
//! health, and the embedded console page and browser client ([`crate::assets`]).
//! Every error is a JSON body `{"error":{"code","message"}}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_PROTOCOL, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_tungstenite::tungstenite::protocol::Role;
use hyper_tungstenite::WebSocketStream;
use hyper_util::rt::TokioIo;
use roomcast_core::{ConnectionId, Identity};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::auth::{extract_token, offers_subprotocol, redact_uri, SUBPROTOCOL};
use crate::config::InvalidTokenPolicy;
use crate::hooks::ConnectRefusal;
use crate::hub::{HubInput, StatusSnapshot};
use crate::node::NodeRooms;
use crate::server::{App, Refusal};
use crate::session::{ReadSide, Reservations, Session};
use crate::shards::Seat;
use crate::writer::ConnWriter;

pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// Handles one HTTP request.
///
/// `seat` is the socket's place on its shard: the shard whose hub serves
/// its requests, held by an upgraded connection for its whole life.
pub(crate) async fn handle(
    app: Arc<App>,
    seat: Arc<Seat>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let path = request.uri().path().to_owned();
    let shard = seat.shard;
    let response = match (request.method(), path.as_str()) {
        (&Method::GET, "/ws/connect") => ws_connect(&app, seat, peer, request).await,
        (&Method::GET, "/ws/status") => status(&app).await,
        (&Method::POST, "/api/broadcast") => {
            crate::publish_api::broadcast(&app, shard, request).await
        }
        (&Method::POST, "/api/send") => crate::publish_api::send(&app, shard, request).await,
        (&Method::GET, "/metrics") => Ok(metrics(&app).await),
        (&Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (&Method::GET, "/readyz") => Ok(match app.verifier.keys_ready().and(app.ready.check()) {
            Ok(()) => json_response(StatusCode::OK, &json!({"status": "ready"})),
            Err(why) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": why}),
            ),
        }),
        (&Method::GET, "/") => Ok(crate::assets::CONSOLE.response(&request)),
        (&Method::GET, "/client/roomcast.js") => Ok(crate::assets::CLIENT.response(&request)),
        (
            _,
            "/ws/connect"
            | "/ws/status"
            | "/metrics"
            | "/healthz"
            | "/readyz"
            | "/"
            | "/client/roomcast.js",
        ) => Err(ApiError::not_allowed("GET")),
        (_, "/api/broadcast" | "/api/send") => Err(ApiError::not_allowed("POST")),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such endpoint",
        )),
    };
    Ok(response.unwrap_or_else(ApiError::into_response))
}

/// An HTTP error answer.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    fn not_allowed(allow: &'static str) -> ApiError {
        let message = format!("this path only answers {allow}");
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                message,
            )
        }
    }

    pub(crate) fn into_response(self) -> HttpResponse {
        let mut response = json_response(
            self.status,
            &json!({"error": {"code": self.code, "message": self.message}}),
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: do not read it as the
            // next request.
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            response
                .headers_mut()
                .insert(UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }

    pub(crate) fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            "the server is shutting down",
        )
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

// ----- WebSocket upgrade ----------------------------------------------------

async fn ws_connect(
    app: &Arc<App>,
    seat: Arc<Seat>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    if !hyper_tungstenite::is_upgrade_request(&request) {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "UPGRADE_REQUIRED",
            "this endpoint speaks WebSocket: send a GET with 'Connection: Upgrade' and 'Upgrade: websocket'",
        ));
    }
    if app.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable());
    }
    if !app.config.allowed_origins.is_empty() {
        let origin = request.headers().get(ORIGIN).and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| {
            app.config
                .allowed_origins
                .iter()
                .any(|allowed| allowed == o)
        }) {
            app.metrics.reject("origin");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "ORIGIN_NOT_ALLOWED",
                "this Origin may not connect",
            ));
        }
    }
    // Admission first: over the limits, a token (an RS256 one costs real
    // CPU) is not even looked at.
    let permit = app.gate.admit(peer.ip()).map_err(|refusal| {
        let (reason, message) = match refusal {
            Refusal::Total => ("capacity", "the server is at its connection limit"),
            Refusal::PerIp => ("per_ip", "too many connections from this address"),
        };
        app.metrics.reject(reason);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_CONNECTIONS",
            message,
        )
    })?;
    // Allocated before the upgrade: the connect hook is told the id the
    // `connected` message will carry.
    let conn = app
        .ids
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .next_connection_id();
    let forwarded = app.hooks.forwarded(request.headers());
    let identity = match extract_token(request.headers(), request.uri().query()) {
        None if app.hooks.has_connect() => match app.hooks.connect(conn, &forwarded).await {
            Ok(identity) => identity,
            Err(refusal) => return Err(connect_refused(app, refusal)),
        },
        None => Identity::Anonymous,
        // On this request's own task: a token whose key must first be
        // fetched again (an unknown `kid`) makes only this request wait.
        Some((token, source)) => match app.verifier.verify_fresh(&token, app.clock.unix_ms()).await
        {
            Ok(user) => Identity::User(user),
            Err(error) if app.config.auth.invalid_token == InvalidTokenPolicy::Reject => {
                app.metrics.reject("invalid_token");
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "INVALID_TOKEN",
                    error.to_string(),
                ));
            }
            Err(error) => {
                warn!(peer = %peer, ?source, %error, uri = %redact_uri(request.uri()), "invalid WebSocket token: connecting as anonymous");
                Identity::Anonymous
            }
        },
    };
    let wants_subprotocol = offers_subprotocol(request.headers());
    // Taken before hyper-tungstenite checks the handshake and builds the 101
    // response: we need the raw upgraded stream (the hub writes its half
    // directly), so its own future, left without the upgrade, is dropped.
    let upgrade = hyper::upgrade::on(&mut request);
    let (mut response, _) = hyper_tungstenite::upgrade(&mut request, None).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BAD_UPGRADE",
            format!("invalid WebSocket handshake: {e}"),
        )
    })?;
    if wants_subprotocol {
        response.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }

    // The set-up runs in a task of its own that ends by spawning the
    // connection's task: a task's future is as large as its largest state,
    // and the set-up's states would otherwise stay allocated for the whole
    // life of every idle connection.
    let app = app.clone();
    let guard = app.sessions.enter();
    tokio::spawn(async move {
        let reservations = Reservations {
            _permit: permit,
            _guard: guard,
            seat,
        };
        let opening = Opening {
            conn,
            identity,
            forwarded,
        };
        if let Some(session) = open_session(&app, upgrade, opening, peer, reservations).await {
            tokio::spawn(session.run());
        }
    });
    Ok(response)
}

/// The upgrade's answer: 401 or 403 as the backend said, 503
/// `HOOK_UNAVAILABLE` when it gave no usable answer.
fn connect_refused(app: &App, refusal: ConnectRefusal) -> ApiError {
    let (reason, code, message) = match refusal {
        ConnectRefusal::Unauthorized => (
            "connect_hook_401",
            "UNAUTHORIZED",
            "the application does not know this client (its connect hook answered 401)",
        ),
        ConnectRefusal::Forbidden => (
            "connect_hook_403",
            "FORBIDDEN",
            "the application refused this client (its connect hook answered 403)",
        ),
        ConnectRefusal::Unavailable => (
            "hook_unavailable",
            "HOOK_UNAVAILABLE",
            "the application's connect hook did not answer; retry later",
        ),
    };
    app.metrics.reject(reason);
    ApiError::new(refusal.status(), code, message)
}

/// Who a connection is, decided before its upgrade.
struct Opening {
    conn: ConnectionId,
    identity: Identity,
    /// The upgrade request's headers for the join hook.
    forwarded: hyper::HeaderMap,
}

/// Completes the upgrade and registers the connection with the hub.
async fn open_session(
    app: &App,
    upgrade: hyper::upgrade::OnUpgrade,
    opening: Opening,
    peer: SocketAddr,
    reservations: Reservations,
) -> Option<Session> {
    let Opening {
        conn,
        identity,
        forwarded,
    } = opening;
    let handshake = Duration::from_millis(app.config.limits.handshake_timeout_ms);
    let upgraded = match tokio::time::timeout(handshake, upgrade).await {
        Ok(Ok(upgraded)) => upgraded,
        Ok(Err(error)) => {
            debug!(peer = %peer, %error, "upgrade failed");
            return None;
        }
        Err(_) => {
            debug!(peer = %peer, "upgrade timed out");
            return None;
        }
    };
    // Reads stay in the connection's task; writes belong to the hub.
    let (read, write) = tokio::io::split(TokioIo::new(upgraded));
    let socket =
        WebSocketStream::from_raw_socket(ReadSide::new(read), Role::Server, Some(app.ws_config))
            .await;
    let (signal, signalled) = oneshot::channel();
    let user_id = identity.user().map(|u| u.id.clone());
    info!(conn = %conn, user = user_id.as_deref().unwrap_or("-"), peer = %peer, "client connected");
    let open = HubInput::Open {
        conn,
        identity,
        writer: ConnWriter::new(write, signal),
        forwarded: (!forwarded.is_empty()).then(|| Box::new(forwarded)),
    };
    let hub = &app.hubs[reservations.seat.shard];
    hub.send(open).await.ok()?;
    Some(Session {
        socket,
        conn,
        signalled,
        hub: hub.clone(),
        settings: app.session_settings.clone(),
        control_frames: None,
        user_id,
        _reservations: reservations,
    })
}

// ----- status, metrics --------------------------------------------------

async fn status(app: &App) -> Result<HttpResponse, ApiError> {
    let snapshot = node_status(app).await?;
    let mut body = json!({
            "status": "operational",
            "active_connections": snapshot.connections,
            "supported_message_types": app.types.names(),
            "rooms": snapshot.rooms,
            "local_rooms": snapshot.local_rooms,
            "node_id": app.node_id,
            "uptime_seconds": app.started.elapsed().as_secs(),
            "shards": app.hubs.len(),
    });
    if let Some(cluster) = app.ready.cluster() {
        // With a shared engine: the deployment's nodes seen alive (through
        // heartbeats, each counted for 5 s), this one included, and their
        // connections as of their last heartbeat (one a second).
        body["cluster"] = json!({
            "engine": "redis",
            "nodes": cluster.nodes,
            "connections": cluster.connections,
        });
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// The node's figures: every shard's hub asked, the answers summed; rooms
/// counted once for the node (a room followed by two shards is one room).
async fn node_status(app: &App) -> Result<StatusSnapshot, ApiError> {
    let mut total = StatusSnapshot {
        connections: 0,
        rooms: 0,
        local_rooms: 0,
    };
    for hub in &app.hubs {
        let (reply, answer) = oneshot::channel();
        hub.send(HubInput::Status { reply })
            .await
            .map_err(|_| ApiError::unavailable())?;
        let snapshot = answer.await.map_err(|_| ApiError::unavailable())?;
        total.connections += snapshot.connections;
        total.rooms += snapshot.rooms;
        total.local_rooms += snapshot.local_rooms;
    }
    if let NodeRooms::Shards { followed, engine } = &app.rooms {
        total.local_rooms = followed.load(Ordering::Relaxed);
        total.rooms = match engine {
            Some(rooms) => rooms.load(Ordering::Relaxed),
            None => total.local_rooms,
        };
    }
    Ok(total)
}

async fn metrics(app: &App) -> HttpResponse {
    if let NodeRooms::Shards { followed, engine } = &app.rooms {
        // Counted once for the node, when asked (see `node_status`).
        let rooms = engine.as_ref().unwrap_or(followed).load(Ordering::Relaxed);
        app.metrics.rooms.set(rooms as i64);
    }
    let mut response = Response::new(Full::new(Bytes::from(app.metrics.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
