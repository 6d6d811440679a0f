//! The Server-Sent Events stream of the API (reference `particle-cloud-api.md` 3): every stream
//! event of the cloud plus the API's own (`particle/firmware/create`, `particle/firmware/release`
//! with `coreid` `api`), fanned out to subscribers, each filtered by its path (all, one device,
//! one product), its name prefix and its token's scope. A stream opens with `:ok` and an empty
//! line, carries `event: NAME` / `data: JSON` / empty line per event, and a lone newline
//! whenever the keep-alive period passes without output (api-js drops a stream after 15 s of
//! silence).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::super::event::iso8601_millis;
use super::super::fleet::ProductId;
use super::super::DeviceId;
use super::auth::Scope;

/// One event ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseItem {
    pub name: String,
    /// `event: ...\ndata: ...\n\n`.
    pub frame: String,
    /// The device it is about (`None` for the API's own events).
    pub device: Option<DeviceId>,
    /// The product of that device, or the product an API event is about.
    pub product: Option<ProductId>,
}

#[derive(Serialize)]
struct ApiEventData<'a> {
    data: &'a str,
    ttl: u32,
    published_at: String,
    coreid: &'a str,
    userid: &'a str,
    version: u16,
    public: bool,
    #[serde(rename = "productID")]
    product_id: ProductId,
}

/// An event the API publishes about a product (`coreid` `api`, reference 4.8); `at` is Unix
/// time.
pub fn api_event(name: &str, data: &str, product: ProductId, at: Duration) -> SseItem {
    let json = serde_json::to_string(&ApiEventData {
        data,
        ttl: 60,
        published_at: iso8601_millis(at.as_millis() as u64),
        coreid: "api",
        userid: "",
        version: 0,
        public: false,
        product_id: product,
    })
    .unwrap_or_default();
    SseItem {
        name: name.to_string(),
        frame: format!("event: {name}\ndata: {json}\n\n"),
        device: None,
        product: Some(product),
    }
}

/// What one subscriber receives.
#[derive(Debug, Clone)]
pub struct Filter {
    pub prefix: String,
    pub device: Option<DeviceId>,
    pub product: Option<ProductId>,
    pub scope: Scope,
}

impl Filter {
    pub fn matches(&self, item: &SseItem) -> bool {
        if !item.name.starts_with(&self.prefix) {
            return false;
        }
        if self.device.is_some() && item.device != self.device {
            return false;
        }
        if self.product.is_some() && item.product != self.product {
            return false;
        }
        match item.device {
            Some(d) => self.scope.allows_device(d, item.product),
            None => item.product.is_some_and(|p| self.scope.allows_product(p)),
        }
    }
}

/// The stream's bytes: `:ok`, then the matching events, a newline after `keepalive` of
/// silence. Ends when the cloud's sender is gone.
pub fn stream(
    rx: broadcast::Receiver<Arc<SseItem>>,
    filter: Filter,
    keepalive: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    struct State {
        rx: broadcast::Receiver<Arc<SseItem>>,
        filter: Filter,
        keepalive: Duration,
        opened: bool,
    }
    let state = State {
        rx,
        filter,
        keepalive,
        opened: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if !s.opened {
            s.opened = true;
            return Some((Ok(Bytes::from_static(b":ok\n\n")), s));
        }
        let deadline = Instant::now() + s.keepalive;
        loop {
            match tokio::time::timeout_at(deadline, s.rx.recv()).await {
                Err(_) => return Some((Ok(Bytes::from_static(b"\n")), s)),
                Ok(Ok(item)) => {
                    if s.filter.matches(&item) {
                        return Some((Ok(Bytes::from(item.frame.clone())), s));
                    }
                }
                // A slow reader misses events, as Particle's stream has no replay.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn item(name: &str, device: Option<u8>, product: Option<ProductId>) -> SseItem {
        SseItem {
            name: name.into(),
            frame: format!("event: {name}\ndata: {{}}\n\n"),
            device: device.map(|n| DeviceId([n; 12])),
            product,
        }
    }

    fn filter(prefix: &str, device: Option<u8>, product: Option<ProductId>) -> Filter {
        Filter {
            prefix: prefix.into(),
            device: device.map(|n| DeviceId([n; 12])),
            product,
            scope: Scope::All,
        }
    }

    #[test]
    fn filters_by_prefix_device_product_and_scope() {
        let a = item("spark/status", Some(1), Some(1000));
        let b = item("spark/flash/status", Some(2), None);
        let api = item("particle/firmware/create", None, Some(1000));
        assert!(filter("spark/", None, None).matches(&a));
        assert!(!filter("spark/flash", None, None).matches(&a));
        assert!(filter("", Some(2), None).matches(&b));
        assert!(!filter("", Some(1), None).matches(&b));
        assert!(filter("", None, Some(1000)).matches(&api));
        assert!(!filter("", Some(1), None).matches(&api));
        let mut scoped = filter("", None, None);
        scoped.scope = Scope::Limited {
            products: [1000].into(),
            devices: Default::default(),
        };
        assert!(scoped.matches(&a) && scoped.matches(&api) && !scoped.matches(&b));
    }

    #[test]
    fn the_stream_opens_with_ok_and_keeps_alive() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = broadcast::channel(16);
            let s = stream(rx, filter("spark/", None, None), Duration::from_secs(9));
            futures_util::pin_mut!(s);
            assert_eq!(s.next().await.unwrap().unwrap(), ":ok\n\n");
            tx.send(Arc::new(item("other", Some(1), None))).unwrap();
            tx.send(Arc::new(item("spark/status", Some(1), None)))
                .unwrap();
            let start = Instant::now();
            assert_eq!(
                s.next().await.unwrap().unwrap(),
                "event: spark/status\ndata: {}\n\n"
            );
            assert_eq!(s.next().await.unwrap().unwrap(), "\n");
            assert_eq!(start.elapsed(), Duration::from_secs(9));
            drop(tx);
            assert!(s.next().await.is_none());
        });
    }
}
