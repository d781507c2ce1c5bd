//! `listchecker`: is the instance's value on a list? Static `overrides` plus a list fetched
//! from `providerUrl` every `refreshInterval` and dropped when not refreshed within `ttl`.
//!
//! While a provider list is configured but not loaded (never fetched, or expired), values
//! not in `overrides` get UNAVAILABLE rather than a guess: a blacklist must not silently
//! admit everyone, and the status tells the operator why.

mod list;
mod provider;

pub use list::{EntryType, List};
pub use provider::{FetchError, Provider, parse_entries};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;

use crate::clock::Clock;
use crate::params;
use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::{CheckHandler, CheckResult, Status, code};

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "listchecker",
        templates: &[Template::ListEntry],
        validate: |doc| parse(doc).map(drop),
        validate_instances: None,
        build,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub provider_url: Option<String>,
    pub refresh_interval: Duration,
    pub ttl: Duration,
    pub caching_interval: Duration,
    pub caching_use_count: i32,
    pub overrides: Vec<String>,
    pub entry_type: EntryType,
    pub blacklist: bool,
}

pub fn parse(doc: &HandlerDoc) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let provider_url = o.get("providerUrl", |p| {
        let url = p.text()?;
        if ["http://", "https://", "file://"].iter().any(|s| url.starts_with(s)) {
            Ok(url)
        } else {
            Err(p.error(format!("{:?} must start with http://, https:// or file://", params::redact_url(&url))))
        }
    })?;
    let refresh_interval = o.get("refreshInterval", params::duration)?.unwrap_or(Duration::from_secs(60));
    if refresh_interval < Duration::from_secs(1) {
        return Err(ConfigError::new(&doc.loc, o.child_path("refreshInterval"), "must be at least 1s"));
    }
    let ttl = o.get("ttl", params::duration)?.unwrap_or(Duration::from_secs(300));
    if ttl < refresh_interval {
        return Err(ConfigError::new(&doc.loc, o.child_path("ttl"), "must be at least refreshInterval"));
    }
    let caching_interval = o.get("cachingInterval", params::duration)?.unwrap_or(Duration::from_secs(300));
    let caching_use_count = o.get("cachingUseCount", params::count)?.unwrap_or(10000);
    let entry_type = o
        .get("entryType", |p| {
            let t = p.text()?;
            EntryType::parse(&t).ok_or_else(|| {
                p.error(format!("unknown entry type {t:?} (STRINGS, CASE_INSENSITIVE_STRINGS, IP_ADDRESSES or REGEX)"))
            })
        })?
        .unwrap_or(EntryType::Strings);
    let overrides = o
        .get("overrides", |p| {
            let entries = p.string_list()?;
            let (_, bad) = List::build(entry_type, &entries);
            match bad.first() {
                Some(b) => Err(p.error(format!("entry {:?}: {}", b.entry, b.reason))),
                None => Ok(entries),
            }
        })?
        .unwrap_or_default();
    let blacklist = o.get("blacklist", |p| p.bool())?.unwrap_or(false);
    o.finish()?;
    if provider_url.is_none() && overrides.is_empty() && !blacklist {
        tracing::warn!(handler = %doc.display_name(), "listchecker whitelist has no entries and no providerUrl: it denies everything");
    }
    Ok(Params {
        provider_url,
        refresh_interval,
        ttl,
        caching_interval,
        caching_use_count,
        overrides,
        entry_type,
        blacklist,
    })
}

struct Fetched {
    list: List,
    at: Instant,
}

/// A built listchecker.
pub struct ListChecker {
    params: Params,
    overrides: List,
    provider: Option<Provider>,
    fetched: ArcSwapOption<Fetched>,
    failing: AtomicBool,
    clock: Arc<dyn Clock>,
}

impl ListChecker {
    pub fn new(params: Params, clock: Arc<dyn Clock>) -> ListChecker {
        let (overrides, _) = List::build(params.entry_type, &params.overrides);
        let provider = params
            .provider_url
            .as_deref()
            .map(|u| Provider::new(u, params.refresh_interval.min(Duration::from_secs(30))));
        ListChecker {
            params,
            overrides,
            provider,
            fetched: ArcSwapOption::empty(),
            failing: AtomicBool::new(false),
            clock,
        }
    }

    /// Fetches the provider list now. Failures keep the previous list until its ttl ends.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let Some(provider) = &self.provider else {
            return Ok(0);
        };
        match provider.fetch().await {
            Ok(entries) => {
                let (list, bad) = List::build(self.params.entry_type, &entries);
                for b in bad.iter().take(5) {
                    tracing::warn!(url = provider.shown_url(), entry = %b.entry, reason = %b.reason, "skipping list entry");
                }
                let n = list.len();
                self.fetched.store(Some(Arc::new(Fetched { list, at: self.clock.now() })));
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = provider.shown_url(), entries = n, "list provider recovered");
                }
                Ok(n)
            }
            Err(e) => {
                // Log the first failure of a streak only: a dead provider polled every
                // second must not flood the log.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "list provider fetch failed; keeping the last list until its ttl");
                }
                Err(e)
            }
        }
    }

    /// Starts polling the provider in the background. The task ends when the checker is
    /// dropped (its handler left the config).
    pub fn start_polling(self: &Arc<Self>) {
        if self.provider.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("listchecker built outside a runtime: providerUrl will not be polled");
            return;
        };
        let weak: Weak<ListChecker> = Arc::downgrade(self);
        let interval = self.params.refresh_interval;
        rt.spawn(async move {
            loop {
                let Some(checker) = weak.upgrade() else {
                    return;
                };
                let _ = checker.refresh().await;
                drop(checker);
                tokio::time::sleep(interval).await;
            }
        });
    }

    fn provider_list(&self) -> Result<Option<arc_swap::Guard<Option<Arc<Fetched>>>>, ()> {
        if self.provider.is_none() {
            return Ok(None);
        }
        let guard = self.fetched.load();
        match guard.as_ref() {
            Some(f) if self.clock.now().saturating_duration_since(f.at) <= self.params.ttl => Ok(Some(guard)),
            _ => Err(()),
        }
    }

    fn result(&self, status: Status) -> CheckResult {
        CheckResult {
            status,
            valid_duration: self.params.caching_interval,
            valid_use_count: self.params.caching_use_count,
            output: HashMap::new(),
        }
    }
}

impl CheckHandler for ListChecker {
    fn check(&self, instance: &InstanceValues) -> CheckResult {
        let Some(value) = instance.field("value") else {
            return self.result(Status::new(code::INVALID_ARGUMENT, "listentry instance has no value"));
        };
        let mut found = self.overrides.contains(value);
        if !found {
            match self.provider_list() {
                Ok(Some(guard)) => found = guard.as_ref().is_some_and(|f| f.list.contains(value)),
                Ok(None) => {}
                Err(()) => {
                    let mut r = self.result(Status::new(code::UNAVAILABLE, "list provider data is not available"));
                    r.valid_duration = r.valid_duration.min(self.params.refresh_interval);
                    return r;
                }
            }
        }
        let text = value.to_text();
        let status = match (self.params.blacklist, found) {
            (true, true) => Status::new(code::PERMISSION_DENIED, format!("{text} is blacklisted")),
            (false, false) => Status::new(code::PERMISSION_DENIED, format!("{text} is not whitelisted")),
            _ => Status::ok(),
        };
        self.result(status)
    }
}

fn build(doc: &HandlerDoc, ctx: &BuildContext) -> Result<Handler, ConfigError> {
    let checker = Arc::new(ListChecker::new(parse(doc)?, ctx.clock.clone()));
    checker.start_polling();
    Ok(Handler { check: Some(checker), quota: None, report: None, generator: None })
}

#[cfg(test)]
mod tests;
