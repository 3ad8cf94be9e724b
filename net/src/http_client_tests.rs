//! The client against a tiny hyper server on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::*;

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

async fn answer(request: Request<Incoming>) -> Result<hyper::Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let response = |status: u16, body: Body| {
        hyper::Response::builder()
            .status(status)
            .body(body)
            .unwrap()
    };
    Ok(match path.as_str() {
        "/json" => response(200, full(r#"{"ok":true}"#)),
        "/echo" => {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let method = request.method().to_string();
            let content_type = header("content-type");
            let cookie = header("cookie");
            let extra = header("x-extra");
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let echoed = serde_json::json!({
                "method": method,
                "content_type": content_type,
                "cookie": cookie,
                "x_extra": extra,
                "body": String::from_utf8_lossy(&body),
            });
            response(200, full(echoed.to_string()))
        }
        "/status/503" => response(503, full("unavailable")),
        "/status/302" => response(302, full("")),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            response(200, full("{}"))
        }
        "/text" => response(200, full("hello")),
        // 64 bytes announced by Content-Length.
        "/big-length" => response(200, full(vec![b'x'; 64])),
        // 64 bytes in chunks, no Content-Length.
        "/big-chunked" => {
            let chunks =
                (0..8).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 8]))));
            response(200, StreamBody::new(stream::iter(chunks)).boxed())
        }
        _ => response(404, full("")),
    })
}

/// A server on loopback; counts the connections it accepted.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(answer))
                    .await;
            });
        }
    });
    (addr, accepted)
}

const SECOND: Duration = Duration::from_secs(1);
const LIVENESS: Duration = Duration::from_secs(10);

#[tokio::test]
async fn get_and_post_json_with_headers() {
    let (addr, accepted) = server().await;
    let client = HttpClient::new();
    let got = client
        .get(&format!("http://{addr}/json"), &HeaderMap::new(), LIVENESS)
        .await
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json::<serde_json::Value>().unwrap()["ok"], true);

    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, HeaderValue::from_static("session=abc"));
    headers.insert(
        HeaderName::from_static("x-extra"),
        HeaderValue::from_static("1"),
    );
    let posted = client
        .clone()
        .post_json(
            &format!("http://{addr}/echo"),
            &serde_json::json!({"room": "team:42"}),
            &headers,
            LIVENESS,
        )
        .await
        .unwrap();
    let echoed: serde_json::Value = posted.json().unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["content_type"], "application/json");
    assert_eq!(echoed["cookie"], "session=abc");
    assert_eq!(echoed["x_extra"], "1");
    let body: serde_json::Value = serde_json::from_str(echoed["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["room"], "team:42");
    // The clone shared the pool: both requests went over one connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn each_failure_has_its_kind() {
    let (addr, _) = server().await;
    let client = HttpClient::with_body_max(32);
    let none = HeaderMap::new();
    let url = |path: &str| format!("http://{addr}{path}");

    let slow = client.get(&url("/slow"), &none, SECOND / 5).await;
    assert_eq!(slow.unwrap_err(), HttpError::Timeout);

    let status = client.get(&url("/status/503"), &none, LIVENESS).await;
    assert_eq!(status.unwrap_err(), HttpError::Status(503));
    // Redirects are answers, not followed.
    let redirect = client.get(&url("/status/302"), &none, LIVENESS).await;
    assert_eq!(redirect.unwrap_err(), HttpError::Status(302));

    let announced = client.get(&url("/big-length"), &none, LIVENESS).await;
    assert_eq!(announced.unwrap_err(), HttpError::BodyTooLarge(32));
    let chunked = client.get(&url("/big-chunked"), &none, LIVENESS).await;
    assert_eq!(chunked.unwrap_err(), HttpError::BodyTooLarge(32));

    let text = client.get(&url("/text"), &none, LIVENESS).await.unwrap();
    let error = text.json::<serde_json::Value>().unwrap_err();
    assert_eq!(error.kind(), "bad_body");

    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let refused = client
        .get(&format!("http://{closed_addr}/json"), &none, LIVENESS)
        .await
        .unwrap_err();
    assert!(matches!(refused, HttpError::Connect(_)), "{refused:?}");
    assert!(refused.to_string().contains("refused"), "{refused}");

    for bad in [
        "ftp://127.0.0.1/x",
        "/relative",
        "not a url",
        "http:///path",
    ] {
        let error = client.get(bad, &none, LIVENESS).await.unwrap_err();
        assert_eq!(error, HttpError::InvalidUrl, "{bad}");
    }
    // The server is still fine after all that.
    assert!(client.get(&url("/json"), &none, LIVENESS).await.is_ok());
}

#[tokio::test]
async fn https_to_an_untrusted_server_fails_to_connect() {
    // A plain-HTTP server spoken to over https: the TLS handshake fails,
    // which is a connect error (not a hang, not a transport error).
    let (addr, _) = server().await;
    let error = HttpClient::new()
        .get(
            &format!("https://localhost:{}/json", addr.port()),
            &HeaderMap::new(),
            LIVENESS,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, HttpError::Connect(_)), "{error:?}");
}
