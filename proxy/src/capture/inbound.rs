//! Where inbound HTTP on a redirected connection goes: the app on the port the caller
//! dialled, on loopback, as Istio's sidecar forwarded it. A connection made to the
//! inbound listener itself (explicit mode) has no dialled port and goes to `--app-addr`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::upstream::Cluster;

/// The app's ports as clusters of one, made on first use and kept, so connections to
/// the same port share a pool. At most one per port number.
#[derive(Debug, Default)]
pub struct InboundApps {
    by_port: Mutex<HashMap<u16, Arc<Cluster>>>,
}

impl InboundApps {
    /// Starts with `--app-addr`'s cluster for its port, so traffic dialled to it shares
    /// the explicit mode's pool.
    pub fn new(app: Option<(u16, Arc<Cluster>)>) -> InboundApps {
        InboundApps { by_port: Mutex::new(app.into_iter().collect()) }
    }

    pub fn get(&self, port: u16) -> Arc<Cluster> {
        let mut map = self.by_port.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(port)
            .or_insert_with(|| {
                let app = crate::route::Upstream { address: "127.0.0.1".into(), port, labels: Vec::new() };
                Arc::new(Cluster::new(format!("inbound|{port}"), vec![app], Default::default()))
            })
            .clone()
    }
}

/// The cluster an inbound request goes to: the app on the dialled port, or `--app-addr`
/// for a request made to the listener itself.
pub fn app_for(app: Option<&Arc<Cluster>>, apps: &InboundApps, dialled: Option<u16>) -> Option<Arc<Cluster>> {
    match dialled {
        Some(port) => Some(apps.get(port)),
        None => app.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialled_port_picks_the_app_and_explicit_mode_keeps_app_addr() {
        let app = InboundApps::default().get(9080);
        let apps = InboundApps::new(Some((9080, app.clone())));
        assert!(Arc::ptr_eq(&app_for(Some(&app), &apps, None).unwrap(), &app));
        assert!(Arc::ptr_eq(&app_for(Some(&app), &apps, Some(9080)).unwrap(), &app), "--app-addr's port: its cluster");
        assert_eq!(app_for(Some(&app), &apps, Some(8443)).unwrap().name, "inbound|8443");
        assert!(Arc::ptr_eq(&apps.get(8443), &apps.get(8443)), "a port's cluster is made once");
        let none = InboundApps::default();
        assert!(app_for(None, &none, None).is_none());
        assert_eq!(app_for(None, &none, Some(7000)).unwrap().name, "inbound|7000");
    }
}
