mod common;
use common::*;

#[tokio::test]
async fn frames_are_acked_after_they_are_stored() {
    let mut server = TestServer::start(|_| {}).await;
    let mut dev = server.device(7).await;
    for seq in 1..=5 {
        dev.send(seq, 4).await;
    }
    let acked = dev.wait_ack(5).await;
    assert_eq!(acked, 5);
    let rows = server.stored(7);
    assert_eq!(rows.len(), 20, "5 frames x 4 readings stored once");
    server.shutdown().await;
}
