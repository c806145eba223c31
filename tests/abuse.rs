//! Slow and abusive clients: a body that trickles, oversized headers, and 10,000 idle
//! connections. Each is cut off by a limit in the `ingress` config while other
//! clients go on being served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{minimal, TestServer};

#[tokio::test]
async fn a_trickling_body_gets_408_at_the_body_timeout_while_others_are_served() {
    let t =
        TestServer::start_with(|c| c.ingress.body_read_timeout = Duration::from_millis(800)).await;
    let addr = t.server().ingress_addr;
    let trickle = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 1000\r\n\r\n{").unwrap();
        // One byte every 100 ms: 1,000 bytes would take 100 s.
        let mut answer = Vec::new();
        s.set_nonblocking(true).unwrap();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(100));
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => {}
            }
            if s.write_all(b" ").is_err() {
                break;
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    });
    // Meanwhile the broker serves everyone else.
    for i in 0..5 {
        assert_eq!(
            t.post_json(&minimal(&format!("meanwhile-{i}")))
                .await
                .status,
            202
        );
    }
    let answer = trickle.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(
        t.records("default").await.len(),
        5,
        "the trickled event was not stored"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_the_connection_is_closed() {
    let t = TestServer::start("").await;
    let addr = t.server().ingress_addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let big = "a".repeat(100 * 1024);
        let _ = s.write_all(
            format!("POST / HTTP/1.1\r\nhost: x\r\nx-padding: {big}\r\ncontent-length: 0\r\n\r\n")
                .as_bytes(),
        );
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(t.post_json(&minimal("after-431")).await.status, 202);
}

/// Raises this process's open-file limit to its hard limit; returns the new limit.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid resource and a struct they fill or read.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_cut_at_the_header_timeout_and_others_get_through() {
    const IDLE: usize = 10_000;
    let limit = raise_nofile();
    // This process holds both ends: the idle clients and the broker's accepted sockets.
    assert!(
        limit as usize > IDLE + 4096 + 512,
        "the open-file limit ({limit}) is too low for this test"
    );
    let t = TestServer::start_with(|c| {
        c.ingress.header_read_timeout = Duration::from_millis(500);
        c.ingress.max_connections = 4096;
    })
    .await;
    let addr = t.server().ingress_addr;
    let mut idle = Vec::with_capacity(IDLE);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..IDLE {
        pending.spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        });
    }
    while let Some(r) = pending.join_next().await {
        if let Ok(Ok(Ok(s))) = r {
            idle.push(s);
        }
    }
    assert!(
        idle.len() >= IDLE * 9 / 10,
        "only {} idle connections were opened",
        idle.len()
    );
    // Every slot is taken by a client that sends nothing; a real one still gets in.
    let reply = tokio::time::timeout(Duration::from_secs(30), t.post_json(&minimal("through")))
        .await
        .expect("a client was served while 10,000 idle connections were open");
    assert_eq!(reply.status, 202);
    // And the idle ones were closed by the broker, not left to hold slots.
    let mut closed = 0;
    for s in idle.iter().take(100) {
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.readable())
            .await
            .map(|_| s.try_read(&mut buf))
        {
            let _ = n;
            closed += 1;
        }
    }
    assert_eq!(
        closed, 100,
        "the first idle connections were closed by the server"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_that_goes_quiet_gives_its_slot_back() {
    let t = TestServer::start_with(|c| {
        c.ingress.header_read_timeout = Duration::from_millis(300);
        c.ingress.max_connections = 1;
    })
    .await;
    let addr = t.server().ingress_addr;
    // One request on a kept-alive connection, then nothing: it holds the only slot.
    let quiet = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let body = minimal("first").to_string();
        write!(s, "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 202"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        s
    })
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(20), t.post_json(&minimal("second")))
        .await
        .expect("the quiet connection was cut and the slot given to the next client");
    assert_eq!(reply.status, 202);
    drop(quiet);
}
