//! The publish API: `POST /api/broadcast` and `POST /api/send`, from the
//! caller's token and body to the hub's answer (routed by [`crate::http`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};
use roomcast_core::User;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use crate::auth::{extract_token, TokenError};
use crate::budget::InboundBytes;
use crate::http::{json_response, ApiError, HttpResponse};
use crate::hub::HubInput;
use crate::server::App;

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

pub(crate) async fn broadcast(
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
pub(crate) async fn send(
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
