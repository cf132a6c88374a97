//! HTTP/1.1 connections kept, lent and reused.
//!
//! One request at a time per connection, handed back when the answer ends,
//! closed when idle too long or beyond `max_idle`.

use super::*;

#[tokio::test]
async fn one_connection_serves_requests_one_after_another() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    for _ in 0..5 {
        let response = pool.send(request("http", up.addr, "/")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(read_all(response).await, "ok");
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_connection_is_lent_again_only_once_its_answer_has_ended() {
    within_5s(lent_again_only_once_its_answer_has_ended()).await;
}

async fn lent_again_only_once_its_answer_has_ended() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let held = pool.send(request("http", up.addr, "/hold")).await.unwrap();
    let mut held = held.into_body();
    let first = held.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "a");

    // The first answer is still streaming: its connection is not lent.
    let second = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(second).await, "ok");
    assert_eq!(up.accepted(), 2);

    up.release.add_permits(1);
    let rest = held.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "b");
    for _ in 0..3 {
        let again = pool.send(request("http", up.addr, "/")).await.unwrap();
        assert_eq!(read_all(again).await, "ok");
    }
    assert_eq!(up.accepted(), 2, "no third connection was opened");
}

#[tokio::test]
async fn an_answer_dropped_unread_closes_its_connection_and_the_next_request_still_goes() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let held = pool.send(request("http", up.addr, "/hold")).await.unwrap();
    drop(held);
    eventually("the abandoned connection is closed", || up.open() == 0).await;
    let next = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(next).await, "ok");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn no_more_than_max_idle_connections_stay_open() {
    let up = upstream(None).await;
    let pool = plain_pool(1, Duration::from_secs(60));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.send(request("http", up.addr, "/hold")).await.unwrap());
    }
    assert_eq!(up.accepted(), 3);
    up.release.add_permits(3);
    for response in held {
        assert_eq!(read_all(response).await, "ab");
    }
    eventually("two of three connections are closed", || up.open() == 1).await;
    let again = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(again).await, "ok");
    assert_eq!(up.accepted(), 3, "the one kept open was reused");
}

#[tokio::test]
async fn idle_connections_are_closed_when_they_expire() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_millis(50));
    let response = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(response).await, "ok");
    assert_eq!(up.open(), 1);
    // Nothing else is sent: the reaper alone closes it.
    eventually("the idle connection is closed", || up.open() == 0).await;
    let next = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(next).await, "ok");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn a_send_polled_after_its_answer_is_an_error_not_a_panic() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    // The second request goes on the connection the first left free: the
    // ready path (`Sent::H1`); the first went by `Sent::Later`.
    for _ in 0..2 {
        let mut sending = std::pin::pin!(pool.send(request("http", up.addr, "/")));
        let response = within_5s(sending.as_mut()).await.unwrap();
        assert_eq!(read_all(response).await, "ok");
        match futures::poll!(sending.as_mut()) {
            Poll::Ready(Err(ProxyError::UpstreamProtocol(why))) => {
                assert!(why.contains("polled after it was answered"), "{why}")
            }
            other => panic!("expected an error, got {:?}", other.map(|r| r.map(|_| ()))),
        }
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn http1_requests_that_start_together_each_get_a_connection() {
    // Waiting for one connection is for HTTP/2; HTTP/1.1 carries one
    // request at a time, so a burst needs a connection each (after the
    // first tells which protocol the host speaks).
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let sends = (0..5).map(|_| pool.send(request("http", up.addr, "/hold")));
    let responses: Vec<_> = within_5s(futures::future::join_all(sends)).await;
    up.release.add_permits(5);
    for response in responses {
        assert_eq!(read_all(response.unwrap()).await, "ab");
    }
    assert_eq!(up.accepted(), 5);
}
