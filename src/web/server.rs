//! The web view's HTTP routes, on `actix-web`:
//!
//! | route | what |
//! | --- | --- |
//! | `/` (`/app.js`, `/style.css`) | the page, embedded in the binary: it needs no network access |
//! | `/api/snapshots?limit=N` | retained snapshots, newest first: the `--format json` objects plus a `view` section |
//! | `/api/snapshots/{id}` | one of them (`404` once it is no longer retained) |
//! | `/api/history?limit=N` | their compact summaries, for the history table and charts |
//! | `/api/overview` | counts, latest ok and failed, min/avg/max |
//! | `/api/bank` | members, total, each controller-to-branch link |
//! | `/api/stream` | Server-Sent Events: `status` (overview and bank) on connecting and whenever it changed (at most every 50 ms); `snapshot` per report; `resync` when a client fell behind |
//! | `/metrics` | Prometheus text format |
//!
//! Every `GET` route answers `HEAD` too, with the same status and headers and no body (`HEAD
//! /api/stream` takes no place among the stream's clients).
//!
//! The server runs one worker thread of its own, so serving pages never runs on the
//! controller's thread. Its memory is bounded whatever clients do: it holds at most
//! [`MAX_CONNECTIONS`] connections (live streams included); beyond that it stops accepting, and
//! connections wait in a listen backlog of [`BACKLOG`] in the kernel (further ones are refused
//! or retried by the client's kernel), so a flood of connections costs at most
//! `MAX_CONNECTIONS` connections' buffers, not one per connection. A connection must send its
//! request head within [`REQUEST_TIMEOUT`] (else `408` and closed), an idle keep-alive
//! connection is closed after [`KEEP_ALIVE`], and one that does not finish closing within
//! [`DISCONNECT_TIMEOUT`] is dropped; so idle or slow connections give their place up. No route
//! reads a request body (actix discards it), and actix caps a request head at 32 KiB and 96
//! headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::{Method, header};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, Route, guard, web};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::{Subscription, WebError, WebView, metrics, sse_frame};

/// The page and its assets, compiled in.
const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");

/// A comment line sent on an idle stream, so a client that went away is noticed (the write
/// fails) and proxies do not time the stream out.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);

/// Kernel send buffer per connection (Linux doubles it for bookkeeping).
const SEND_BUFFER_BYTES: u32 = 64 * 1024;

/// Connections served at once: the [`super::MAX_STREAM_CLIENTS`] live streams and plenty of
/// room for pages and scrapers besides. Each costs the server some tens of KiB at most.
pub const MAX_CONNECTIONS: usize = 256;

/// Connections the kernel holds, accepted but not yet taken by the server, while it is at
/// [`MAX_CONNECTIONS`].
pub const BACKLOG: u32 = 256;

/// Time a new connection has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// An idle keep-alive connection is closed after this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Time a closing connection has to finish closing.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A second handle on a connection's socket, taken when it is accepted: with it the view can
/// close a connection whose client stopped reading, which actix never does while a response is
/// waiting to be written.
#[derive(Debug, Clone)]
pub(super) struct ConnectionSocket(Arc<std::net::TcpStream>);

impl ConnectionSocket {
    /// Shuts the connection down both ways: whatever is blocked writing to it fails at once and
    /// actix drops the connection.
    pub(super) fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// Keeps a [`ConnectionSocket`] of every accepted connection in its extensions.
fn keep_socket(connection: &dyn std::any::Any, extensions: &mut actix_web::dev::Extensions) {
    let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    match tcp.as_fd().try_clone_to_owned() {
        Ok(fd) => {
            extensions.insert(ConnectionSocket(Arc::new(std::net::TcpStream::from(fd))));
        }
        Err(err) => log::warn!(
            "web view: no second handle on a connection ({err}); if it stops reading, it keeps its place"
        ),
    }
}

/// A running web server.
#[derive(Debug)]
pub struct WebServer {
    /// Where it listens (the actual port when asked for port 0).
    pub addr: SocketAddr,
    /// Stops it.
    pub handle: ServerHandle,
}

impl WebServer {
    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// Binds `addr` and starts serving `view` in the background. Must be called inside an actix
/// system (or a tokio runtime); fails at once if the address cannot be bound.
pub fn serve(view: WebView, addr: SocketAddr) -> Result<WebServer, WebError> {
    let data = web::Data::new(view);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/", get().to(index))
            .route("/index.html", get().to(index))
            .route("/app.js", get().to(app_js))
            .route("/style.css", get().to(style_css))
            .route("/favicon.ico", get().to(no_content))
            .route("/api/snapshots", get().to(snapshots))
            .route("/api/snapshots/{id}", get().to(snapshot))
            .route("/api/history", get().to(history))
            .route("/api/overview", get().to(overview))
            .route("/api/bank", get().to(bank))
            .route("/api/stream", get().to(stream))
            .route("/metrics", get().to(metrics_text))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .max_connections(MAX_CONNECTIONS)
    .backlog(BACKLOG)
    .keep_alive(KEEP_ALIVE)
    .client_request_timeout(REQUEST_TIMEOUT)
    .client_disconnect_timeout(DISCONNECT_TIMEOUT)
    .on_connect(keep_socket)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener(addr).map_err(|source| WebError::Bind { addr, source })?)
    .map_err(|source| WebError::Bind { addr, source })?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| WebError::Bind {
            addr,
            source: std::io::Error::other("bound to no address"),
        })?;
    let running = server.run();
    let handle = running.handle();
    actix_rt::spawn(async move {
        if let Err(err) = running.await {
            log::error!("web view on {bound} stopped: {err}");
        }
    });
    log::info!("web view at http://{bound}/");
    Ok(WebServer {
        addr: bound,
        handle,
    })
}

/// The listening socket, with a fixed kernel send buffer that every accepted connection
/// inherits: a client that stops reading holds at most this much in the kernel (instead of
/// autotuning's 4 MiB), then the server stops writing to it and the client falls behind in the
/// broadcast channel, whose backlog is shared and bounded.
fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(SEND_BUFFER_BYTES)?;
    socket.bind(addr)?;
    // `HttpServer::backlog` applies to the sockets it binds itself, not to this one.
    socket.listen(BACKLOG)?.into_std()
}

/// A `GET` route that answers `HEAD` too: the same status and headers, no body (actix-http
/// leaves the body out of any response to `HEAD`).
fn get() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn no_content() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

fn json(body: String) -> HttpResponse {
    json_bytes(body.into_bytes())
}

/// A JSON response written by `write` into memory (which cannot fail; should it, a `500`).
fn json_written(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> HttpResponse {
    let mut body = Vec::new();
    match write(&mut body) {
        Ok(()) => json_bytes(body),
        Err(err) => error(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot write the response: {err}"),
        ),
    }
}

fn json_bytes(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::json!({ "error": message }).to_string())
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        &format!("no such page: {}", request.path()),
    )
}

/// The `limit` query parameter: absent means every retained snapshot; anything else must be a
/// positive integer (the error is the message for a `400`).
fn limit(request: &HttpRequest) -> Result<usize, String> {
    let query = request.query_string();
    let Some(value) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("limit="))
    else {
        return Ok(usize::MAX);
    };
    match value.parse::<usize>() {
        Ok(limit) if limit > 0 => Ok(limit),
        _ => Err(format!("limit must be a positive integer, not {value:?}")),
    }
}

fn bad_request(message: &str) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, message)
}

async fn snapshots(request: HttpRequest, view: web::Data<WebView>) -> HttpResponse {
    match limit(&request) {
        Ok(limit) => json_written(|body| view.write_snapshots(limit, body)),
        Err(message) => bad_request(&message),
    }
}

async fn snapshot(request: HttpRequest, view: web::Data<WebView>) -> HttpResponse {
    let raw = request.match_info().get("id").unwrap_or_default();
    let Ok(id) = raw.parse::<u32>() else {
        return error(
            actix_web::http::StatusCode::BAD_REQUEST,
            &format!("a snapshot id is a number, not {raw:?}"),
        );
    };
    match view.snapshot(id) {
        Some(retained) => json(retained.json().to_owned()),
        None => error(
            actix_web::http::StatusCode::NOT_FOUND,
            &format!("snapshot {id} is not retained (never reported, or older than the history)"),
        ),
    }
}

async fn history(request: HttpRequest, view: web::Data<WebView>) -> HttpResponse {
    match limit(&request) {
        Ok(limit) => json_written(|body| view.write_history(limit, body)),
        Err(message) => bad_request(&message),
    }
}

async fn overview(view: web::Data<WebView>) -> HttpResponse {
    json(view.read(|state| state.overview_json().to_string()))
}

async fn bank(view: web::Data<WebView>) -> HttpResponse {
    json(view.read(|state| state.bank_json().to_string()))
}

async fn metrics_text(view: web::Data<WebView>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(view.read(metrics::render))
}

/// One stream client: the current status first, then every event as it happens.
struct StreamState {
    first: Option<Bytes>,
    subscription: Subscription,
}

/// The last frame of a stream closed for a newer viewer.
const EVICTED: &str = "{\"reason\":\"closed for a newer viewer: too many live streams\"}";

async fn stream(request: HttpRequest, view: web::Data<WebView>) -> HttpResponse {
    let response = || {
        let mut response = HttpResponse::Ok();
        response
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("X-Accel-Buffering", "no"));
        response
    };
    // HEAD: the headers of a stream, without taking a place among the stream's clients.
    if request.method() == Method::HEAD {
        return response().finish();
    }
    let subscription = view.subscribe(request.conn_data::<ConnectionSocket>().cloned());
    let status = view.read(|state| state.status_json().to_string());
    let start = StreamState {
        first: Some(sse_frame("status", &status)),
        subscription,
    };
    let frames = futures_util::stream::unfold(start, |mut client| async move {
        if let Some(first) = client.first.take() {
            return Some((Ok::<_, Infallible>(first), client));
        }
        if client.subscription.evicted.is_cancelled() {
            // The `evicted` frame went out: end the stream.
            return None;
        }
        let frame = tokio::select! {
            biased;
            () = client.subscription.evicted.cancelled() => sse_frame("evicted", EVICTED),
            event = client.subscription.events.recv() => match event {
                Ok(frame) => frame,
                Err(RecvError::Lagged(missed)) => {
                    sse_frame("resync", &format!("{{\"missed\":{missed}}}"))
                }
                Err(RecvError::Closed) => return None,
            },
            () = tokio::time::sleep(STREAM_KEEPALIVE) => Bytes::from_static(b": keep-alive\n\n"),
        };
        Some((Ok(frame), client))
    });
    response().streaming(frames)
}
