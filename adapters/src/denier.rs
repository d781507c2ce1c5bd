//! `denier`: answers every check with a configured status (FAILED_PRECONDITION by
//! default), and grants no quota.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mixr_proto::DIRECT_HTTP_RESPONSE_TYPE_URL;
use mixr_proto::istio::policy::v1beta1::DirectHttpResponse;
use mixr_rules::config::{ConfigError, HandlerDoc, Param};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;

use crate::params;
use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::{BoxFuture, CheckHandler, CheckResult, QuotaArgs, QuotaHandler, QuotaResult, Status, code};

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "denier",
        templates: &[Template::CheckNothing, Template::ListEntry, Template::Quota],
        validate: |doc| parse(doc).map(drop),
        validate_instances: None,
        build,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Denier {
    pub status: Status,
    pub valid_duration: Duration,
    pub valid_use_count: i32,
}

pub fn parse(doc: &HandlerDoc) -> Result<Denier, ConfigError> {
    let o = doc.params().obj()?;
    let status = o
        .get("status", |p| {
            let s = p.obj()?;
            let code = s
                .get("code", |p| {
                    let t = p.text()?;
                    code::parse(&t).ok_or_else(|| p.error(format!("{t:?} is not a gRPC status code")))
                })?
                .unwrap_or(code::FAILED_PRECONDITION);
            let message = s.get("message", |p| p.text())?.unwrap_or_default();
            let direct_response = s.get("details", parse_details)?.flatten();
            s.finish()?;
            Ok(Status { code, message, direct_response })
        })?
        .unwrap_or_else(|| Status::new(code::FAILED_PRECONDITION, ""));
    let valid_duration = o.get("validDuration", params::duration)?.unwrap_or(Duration::from_secs(5));
    let valid_use_count = o.get("validUseCount", params::count)?.unwrap_or(1000);
    o.finish()?;
    Ok(Denier { status, valid_duration, valid_use_count })
}

/// `details` is a list of `Any` in protobuf's JSON form; we understand DirectHttpResponse.
fn parse_details(p: Param<'_>) -> Result<Option<DirectHttpResponse>, ConfigError> {
    let mut found = None;
    for (item, path) in p.list()? {
        let d = Param::new(&item, p.loc, &path).obj()?;
        let type_url = d.require("@type", |p| p.text())?;
        if type_url != DIRECT_HTTP_RESPONSE_TYPE_URL {
            return Err(Param::new(&item, p.loc, &path)
                .error(format!("unsupported detail type {type_url:?} (only {DIRECT_HTTP_RESPONSE_TYPE_URL})")));
        }
        let code = d
            .get("code", |p| {
                let n = p.i64()?;
                if (100..=599).contains(&n) { Ok(n as i32) } else { Err(p.error(format!("{n} is not an HTTP status"))) }
            })?
            .unwrap_or(0);
        let body = d.get("body", |p| p.text())?.unwrap_or_default();
        let headers: HashMap<String, String> = d
            .get("headers", |p| {
                let mut out = HashMap::new();
                for (k, v) in p.entries()? {
                    let path = format!("{}.{k}", p.path());
                    out.insert(k, Param::new(v, p.loc, &path).text()?);
                }
                Ok(out)
            })?
            .unwrap_or_default();
        d.finish()?;
        found = Some(DirectHttpResponse { code, body, headers });
    }
    Ok(found)
}

fn build(doc: &HandlerDoc, _: &BuildContext) -> Result<Handler, ConfigError> {
    let d = Arc::new(parse(doc)?);
    Ok(Handler { check: Some(d.clone()), quota: Some(d), report: None, generator: None })
}

impl CheckHandler for Denier {
    fn check(&self, _: &InstanceValues) -> CheckResult {
        CheckResult {
            status: self.status.clone(),
            valid_duration: self.valid_duration,
            valid_use_count: self.valid_use_count,
            output: HashMap::new(),
        }
    }
}

impl QuotaHandler for Denier {
    fn alloc<'a>(&'a self, _: &'a InstanceValues, _: &'a str, _: QuotaArgs) -> BoxFuture<'a, QuotaResult> {
        Box::pin(async move {
            QuotaResult { status: Status::ok(), granted: 0, valid_duration: self.valid_duration, limit: None }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixr_rules::config::load_str;

    fn denier(spec: &str) -> Result<Denier, ConfigError> {
        let text = format!("apiVersion: config.istio.io/v1alpha2\nkind: denier\nmetadata: {{name: d}}\nspec:\n{spec}");
        let (set, mut errors) = load_str("d.yaml", &text, "istio-system");
        if !errors.is_empty() {
            return Err(errors.remove(0));
        }
        parse(&set.handlers[0])
    }

    #[test]
    fn defaults_follow_mixer() {
        let d = denier("  {}\n").unwrap();
        assert_eq!(d.status.code, code::FAILED_PRECONDITION);
        assert_eq!(d.valid_duration, Duration::from_secs(5));
        assert_eq!(d.valid_use_count, 1000);
        let r = d.check(&InstanceValues::default());
        assert_eq!(r.status.code, 9);
    }

    #[test]
    fn status_validity_and_direct_response() {
        let d = denier(
            "  status: {code: 7, message: Not allowed, details: [{'@type': type.googleapis.com/istio.policy.v1beta1.DirectHttpResponse, code: 302, body: go away, headers: {location: 'https://login'}}]}\n  validDuration: 10s\n  valid_use_count: 3\n",
        )
        .unwrap();
        assert_eq!(d.status.code, 7);
        assert_eq!(d.status.message, "Not allowed");
        let dr = d.status.direct_response.as_ref().unwrap();
        assert_eq!((dr.code, dr.body.as_str()), (302, "go away"));
        assert_eq!(dr.headers["location"], "https://login");
        assert_eq!((d.valid_duration, d.valid_use_count), (Duration::from_secs(10), 3));
        assert_eq!(denier("  status: {code: UNAUTHENTICATED}\n").unwrap().status.code, 16);
    }

    #[test]
    fn bad_params_are_named() {
        let e = denier("  status: {code: 99}\n").unwrap_err();
        assert_eq!(e.key, "spec.status.code");
        let e = denier("  validDuration: soon\n").unwrap_err();
        assert_eq!(e.key, "spec.validDuration");
        let e = denier("  colour: red\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.message.as_str()), ("spec.colour", "unknown key"));
    }

    #[tokio::test]
    async fn quota_is_never_granted() {
        let d = denier("  {}\n").unwrap();
        let r = d
            .alloc(&InstanceValues::default(), "q", QuotaArgs { dedup_id: "x".into(), amount: 5, best_effort: true })
            .await;
        assert_eq!(r.granted, 0);
    }
}
