//! Splicing an upgraded (WebSocket) connection between client and upstream.
//!
//! Invariant: a splice starts only after the upstream answered `101 Switching
//! Protocols` to a request that asked to upgrade and whose connection can upgrade
//! (hyper put an `OnUpgrade` in its extensions). Anything else is an ordinary
//! response and no bytes ever flow outside HTTP framing.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Waits for both sides to finish switching protocols, then copies bytes both
/// ways until either side closes, or until the listener that accepted the
/// client has drained (`drained`): upgraded connections are outside hyper's
/// graceful shutdown, so they end when the drain does. Runs on its own task so
/// the 101 can be sent.
pub fn splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    upstream_name: metrics::SharedString,
    errors: crate::metrics::UpstreamErrors,
    request_id: String,
    drained: Option<crate::server::Drained>,
) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::warn!(upstream = %upstream_name, request_id, %error, "upgrade failed before splicing");
                errors.count(crate::metrics::UpstreamError::Upgrade);
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        let result = match drained {
            Some(d) => tokio::select! {
                r = copy => r,
                () = d.wait() => {
                    tracing::debug!(upstream = %upstream_name, request_id, "closing an upgraded connection at shutdown");
                    return;
                }
            },
            None => copy.await,
        };
        match result {
            Ok((to_upstream, to_client)) => {
                tracing::debug!(upstream = %upstream_name, request_id, to_upstream, to_client, "upgraded connection closed");
            }
            // Resets on either side are the normal end of many WebSockets.
            Err(error) => {
                tracing::debug!(upstream = %upstream_name, request_id, %error, "upgraded connection ended with an error");
            }
        }
    });
}
