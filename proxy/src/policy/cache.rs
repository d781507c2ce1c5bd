//! The check cache, as Istio's mixerclient kept it: an answer's referenced attributes
//! define a shape; a later request with the same values for the EXACT attributes (and
//! without the ABSENCE ones) reuses the answer until it expires or its uses run out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mixr_proto::istio::mixer::v1::check_response::PreconditionResult;
use mixr_rules::bag::Condition;
use mixr_rules::bag::referenced::decode_referenced;
use mixr_rules::value::Value;

use super::Verdict;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    name: String,
    key: Option<String>,
    absent: bool,
}

#[derive(Debug)]
struct Entry {
    verdict: Verdict,
    expires: Instant,
    uses_left: i32,
}

#[derive(Debug, Default)]
struct Inner {
    shapes: Vec<Vec<Ref>>,
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
}

#[derive(Debug)]
pub struct CheckCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

fn lookup_value(attrs: &[(&str, Value<'_>)], r: &Ref) -> Option<String> {
    let v = attrs.iter().find(|(n, _)| *n == r.name).map(|(_, v)| v)?;
    match (&r.key, v) {
        (Some(k), Value::StringMap(m)) => m.get(k).map(str::to_string),
        (Some(_), _) => None,
        (None, v) => Some(v.to_text()),
    }
}

/// The cache key of `attrs` under `shape`, or `None` when the request does not fit it.
fn key(shape: &[Ref], attrs: &[(&str, Value<'_>)]) -> Option<String> {
    let mut k = String::new();
    for r in shape {
        match (lookup_value(attrs, r), r.absent) {
            (None, true) => k.push_str(&format!("{}[{}]!;", r.name, r.key.as_deref().unwrap_or(""))),
            (Some(v), false) => k.push_str(&format!("{}[{}]={v:?};", r.name, r.key.as_deref().unwrap_or(""))),
            _ => return None,
        }
    }
    Some(k)
}

impl CheckCache {
    pub fn new(capacity: usize) -> CheckCache {
        CheckCache { inner: Mutex::new(Inner::default()), capacity }
    }

    pub fn lookup(&self, attrs: &[(&str, Value<'_>)], now: Instant) -> Option<Verdict> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<String> = inner.shapes.iter().filter_map(|s| key(s, attrs)).collect();
        for k in keys {
            if let Some(e) = inner.entries.get_mut(&k) {
                if e.expires > now && e.uses_left > 0 {
                    e.uses_left -= 1;
                    return Some(e.verdict.clone());
                }
                inner.entries.remove(&k);
            }
        }
        None
    }

    pub fn insert(&self, attrs: &[(&str, Value<'_>)], p: &PreconditionResult, verdict: Verdict, now: Instant) {
        let Some(refs) = p.referenced_attributes.as_ref().and_then(|r| decode_referenced(r).ok()) else { return };
        let shape: Vec<Ref> = refs
            .into_iter()
            .map(|r| Ref {
                name: r.name.to_string(),
                key: r.map_key.map(|k| k.to_string()),
                absent: r.condition == Condition::Absence,
            })
            .collect();
        let Some(k) = key(&shape, attrs) else { return };
        let ttl =
            p.valid_duration.map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)).unwrap_or_default();
        if ttl.is_zero() || p.valid_use_count <= 0 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.shapes.contains(&shape) {
            inner.shapes.push(shape);
        }
        if inner
            .entries
            .insert(k.clone(), Entry { verdict, expires: now + ttl, uses_left: p.valid_use_count })
            .is_none()
        {
            inner.order.push_back(k);
        }
        // Oldest out first: a bounded cache, as mixerclient's LRU.
        while inner.entries.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixr_rules::bag::Referenced;
    use mixr_rules::value::{MapVal, StringMap};
    use std::borrow::Cow;

    fn precondition(uses: i32) -> PreconditionResult {
        let mut r = Referenced::new();
        r.map_key("request.headers", Cow::Borrowed("end-user"), true);
        r.attribute("source.namespace", false);
        PreconditionResult {
            valid_duration: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
            valid_use_count: uses,
            referenced_attributes: Some(r.to_proto(222)),
            ..Default::default()
        }
    }

    fn attrs(user: &str) -> Vec<(&'static str, Value<'static>)> {
        vec![
            (
                "request.headers",
                Value::StringMap(MapVal::from(StringMap::new(vec![("end-user".into(), user.to_string().into())]))),
            ),
            ("request.path", Value::String("/anything".into())),
        ]
    }

    #[test]
    fn hits_need_equal_exact_values_and_absent_absences() {
        let c = CheckCache::new(100);
        let now = Instant::now();
        let v = super::super::deny(7, "no");
        c.insert(&attrs("jason"), &precondition(2), v.clone(), now);
        assert_eq!(c.lookup(&attrs("jason"), now), Some(v.clone()), "same user, other path: a hit");
        assert_eq!(c.lookup(&attrs("mary"), now), None, "another user: a miss");
        let mut with_ns = attrs("jason");
        with_ns.push(("source.namespace", Value::String("x".into())));
        assert_eq!(c.lookup(&with_ns, now), None, "an attribute that was absent is present: a miss");
        assert_eq!(c.lookup(&attrs("jason"), now), Some(v), "second and last use");
        assert_eq!(c.lookup(&attrs("jason"), now), None, "uses spent");
        c.insert(&attrs("jason"), &precondition(100), super::super::deny(7, "no"), now);
        assert_eq!(c.lookup(&attrs("jason"), now + Duration::from_secs(11)), None, "expired");
    }

    #[test]
    fn bounded() {
        let c = CheckCache::new(3);
        for i in 0..10 {
            c.insert(&attrs(&format!("u{i}")), &precondition(5), super::super::deny(7, "no"), Instant::now());
        }
        assert_eq!(c.len(), 3);
    }
}
