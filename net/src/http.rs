//! HTTP routing: the WebSocket upgrade, status, publish API, metrics,
//! health, and the embedded console page and browser client ([`crate::assets`]).
//! Every error is a JSON body `{"error":{"code","message"}}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_tungstenite::tungstenite::protocol::Role;
use hyper_tungstenite::WebSocketStream;
use hyper_util::rt::TokioIo;
use roomcast_core::{ConnectionId, Identity, User};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::{extract_token, offers_subprotocol, redact_uri, TokenError, SUBPROTOCOL};
use crate::budget::InboundBytes;
use crate::config::InvalidTokenPolicy;
use crate::hooks::ConnectRefusal;
use crate::hub::{HubInput, StatusSnapshot};
use crate::node::NodeRooms;
use crate::server::{App, Refusal};
use crate::session::{Held, ReadSide, Session};
use crate::shards::Seat;
use crate::writer::ConnWriter;

type HttpResponse = Response<Full<Bytes>>;

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
        (&Method::POST, "/api/broadcast") => broadcast(&app, shard, request).await,
        (&Method::POST, "/api/send") => send(&app, shard, request).await,
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
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
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

    fn into_response(self) -> HttpResponse {
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

    fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SHUTTING_DOWN",
            "the server is shutting down",
        )
    }
}

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
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
        let held = Held {
            _permit: permit,
            _guard: guard,
            seat,
        };
        let opening = Opening {
            conn,
            identity,
            forwarded,
        };
        if let Some(session) = open_session(&app, upgrade, opening, peer, held).await {
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
    held: Held,
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
    let hub = &app.hubs[held.seat.shard];
    hub.send(open).await.ok()?;
    Some(Session {
        socket,
        conn,
        signalled,
        hub: hub.clone(),
        settings: app.session_settings.clone(),
        control_frames: None,
        user_id,
        _held: held,
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

// ----- publish API ------------------------------------------------------

/// The caller of a publish endpoint: a bearer token with publishing rights.
async fn api_caller(app: &App, request: &Request<Incoming>) -> Result<User, ApiError> {
    let token = match extract_token(request.headers(), None) {
        Some((token, _)) => token,
        None => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send 'Authorization: Bearer <jwt>' with a token whose scope includes publish",
            ))
        }
    };
    let user = app
        .verifier
        .verify_fresh(&token, app.clock.unix_ms())
        .await
        .map_err(|error| {
            let code = if error == TokenError::Expired {
                "TOKEN_EXPIRED"
            } else {
                "INVALID_TOKEN"
            };
            ApiError::new(StatusCode::UNAUTHORIZED, code, error.to_string())
        })?;
    if !user
        .scopes
        .iter()
        .any(|s| s == "publish" || s.starts_with("publish:"))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "the token's scope does not grant publish",
        ));
    }
    Ok(user)
}

/// Reads the body within the configured size (413 beyond it) and time
/// (408 beyond it; the connection is then closed).
async fn read_body(app: &App, request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = app.config.limits.api_body_bytes_max;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("bodies are limited to {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let timeout_ms = app.config.limits.api_body_timeout_ms;
    let collect = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(Duration::from_millis(timeout_ms), collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_BODY",
            "could not read the request body",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!("the request body did not arrive within {timeout_ms} ms"),
        )),
    }
}

/// The body's share of the inbound byte budget, held until the hub has
/// handled the publish; 503 `SERVER_BUSY` when the budget is full.
fn inbound_share(app: &App, bytes: usize) -> Result<InboundBytes, ApiError> {
    app.inbound.try_take(bytes).ok_or_else(|| {
        app.metrics.server_busy.inc();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVER_BUSY",
            "the server is busy (inbound bytes at their limit); retry later",
        )
    })
}

fn invalid(error: roomcast_core::PublishError) -> ApiError {
    let status = match error {
        roomcast_core::PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        roomcast_core::PublishError::EngineUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, error.code(), error.message())
}

/// Publish calls that start after the shutdown began get 503; those in
/// progress when it began are completed (the hub lives until they are).
fn refuse_when_shutting_down(app: &App) -> Result<(), ApiError> {
    if app.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(ApiError::unavailable());
    }
    Ok(())
}

async fn broadcast(
    app: &App,
    shard: usize,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let received = Instant::now();
    refuse_when_shutting_down(app)?;
    let user = api_caller(app, &request).await?;
    let body = read_body(app, request).await?;
    let inbound = inbound_share(app, body.len())?;
    let publish =
        roomcast_core::validate::parse_broadcast_body(&body, &app.types, &app.config.limits)
            .map_err(invalid)?;
    if let Some(room) = publish.rooms.iter().find(|room| !user.can_publish(room)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("no publish grant for room: {room}"),
        ));
    }
    let (reply, answer) = oneshot::channel();
    app.hubs[shard]
        .send(HubInput::Broadcast {
            publish,
            received,
            reply,
            inbound,
        })
        .await
        .map_err(|_| ApiError::unavailable())?;
    let receipt = answer
        .await
        .map_err(|_| ApiError::unavailable())?
        .map_err(invalid)?;
    for room in &receipt.rooms {
        debug!(room = %room.room, seq = room.seq, epoch = %room.epoch, user = %user.id, "broadcast published");
    }
    let seqs: serde_json::Map<String, Value> = receipt
        .rooms
        .iter()
        .map(|r| (r.room.to_string(), json!(r.seq)))
        .collect();
    let epochs: serde_json::Map<String, Value> = receipt
        .rooms
        .iter()
        .map(|r| (r.room.to_string(), json!(r.epoch)))
        .collect();
    let mut body = json!({"delivered": receipt.delivered, "seqs": seqs, "epochs": epochs});
    if let [only] = receipt.rooms.as_slice() {
        body["seq"] = json!(only.seq);
        body["epoch"] = json!(only.epoch);
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /api/send`: handed to every shard's hub (each delivers to its
/// own connections), and from this shard's on to the engine for other
/// nodes; `delivered` sums the shards' counts.
async fn send(
    app: &App,
    shard: usize,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    refuse_when_shutting_down(app)?;
    let user = api_caller(app, &request).await?;
    if !user.scopes.iter().any(|s| s == "publish") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "/api/send needs the unrestricted publish scope",
        ));
    }
    let body = read_body(app, request).await?;
    let inbound = inbound_share(app, body.len())?;
    let message = roomcast_core::validate::parse_send_body(&body, &app.types).map_err(invalid)?;
    let mut answers = Vec::with_capacity(app.hubs.len());
    // This shard first: it passes the message on to other nodes, and holds
    // the body's share of the inbound budget.
    let mut inbound = Some(inbound);
    let order = std::iter::once(shard).chain((0..app.hubs.len()).filter(|&s| s != shard));
    for (nth, target) in order.enumerate() {
        let mut message = message.clone();
        message.to_other_nodes = nth == 0;
        let (reply, answer) = oneshot::channel();
        app.hubs[target]
            .send(HubInput::Send {
                message,
                reply,
                inbound: inbound.take(),
            })
            .await
            .map_err(|_| ApiError::unavailable())?;
        answers.push(answer);
    }
    let mut delivered = 0;
    for answer in answers {
        delivered += answer
            .await
            .map_err(|_| ApiError::unavailable())?
            .map_err(invalid)?;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"delivered": delivered}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::validate::RoomSeq;
    use roomcast_core::{PublishError, RoomName};

    #[test]
    fn an_engine_failure_is_a_503_that_names_what_was_appended() {
        let appended = vec![RoomSeq {
            room: RoomName::new("downloads").unwrap(),
            epoch: "e-1".into(),
            seq: 7,
        }];
        let error = PublishError::EngineUnavailable {
            message: "the engine did not append to: queue (timed out); appended and delivered: downloads (seq 7)".into(),
            appended,
        };
        let response = invalid(error).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        // A `Full` body is ready at once.
        let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("a full body is ready")
            .expect("infallible")
            .to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "ENGINE_UNAVAILABLE");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("downloads (seq 7)")));
    }
}
