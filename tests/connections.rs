//! The server's own socket handling, against a real listener: a client
//! that dribbles its headers or its body is cut off, and connections past
//! the cap are closed as they come, while the server goes on answering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use precis::http::{AppState, ServerLimits};
use precis_core::engine::{FakeLoader, Routing};
use precis_service::app::Services;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server under `limits` on a free port; its address.
async fn start(limits: ServerLimits) -> std::net::SocketAddr {
    let services = Services::assemble(
        Arc::new(FakeLoader::new(&["fake"])),
        Routing {
            summarizers: vec!["fake".into()],
            translators: vec!["fake".into()],
        },
        None,
        Some(limits.max_chars),
    );
    services.engine.load_routed().unwrap();
    let state = AppState::new(services.engine, limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(precis::http::serve(
        state,
        listener,
        Duration::from_secs(1),
        std::future::pending(),
    ));
    addr
}

/// What the server sends on `stream` until it closes it (or 10 s pass).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&seen).to_string()
}

/// `GET /health` on a new connection: the status line.
async fn health(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream).await;
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_a_header_byte_a_second_is_cut_off() {
    let addr = start(ServerLimits {
        header_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /health HTTP/1.1\r\nhost: slowly-but-surely\r\n".iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(health(addr).await.contains("200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_does_not_arrive_is_408() {
    let addr = start(ServerLimits {
        body_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/summarize HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"text\": ",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_closed_as_they_come() {
    let addr = start(ServerLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..ServerLimits::default()
    })
    .await;
    let held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    // Let the server take both before the third comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let started = Instant::now();
    let answer = until_closed(&mut third).await;
    assert!(answer.is_empty(), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(health(addr).await.contains("200"));
}
