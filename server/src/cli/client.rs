//! `mixr check` / `mixr report`: a client that encodes attributes with the global
//! dictionary, as a proxy does, and prints the decoded answer.

use std::borrow::Cow;
use std::process::ExitCode;

use clap::Args;
use mixr_proto::istio::mixer::v1::check_request::QuotaParams;
use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_proto::istio::mixer::v1::{CheckRequest, CheckResponse, ReportRequest};
use mixr_rules::bag::Encoder;
use mixr_rules::bag::referenced::decode_referenced;
use mixr_rules::manifest::Manifest;
use mixr_rules::value::{MapVal, StringMap, Value, ValueType, ip_to_bytes, parse_duration, parse_timestamp};

use crate::metrics::code_name;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Server address (host:port or http://host:port).
    #[arg(long, short = 's', default_value = "127.0.0.1:9091")]
    server: String,
    /// An attribute, `name=value`; maps as `name=k1:v1,k2:v2`. Types follow Istio's
    /// vocabulary (unknown names are strings).
    #[arg(long = "attribute", short = 'a')]
    attributes: Vec<String>,
    /// A quota to ask for, `name=amount` (append `,best_effort` to take what is left).
    #[arg(long = "quota", short = 'q')]
    quotas: Vec<String>,
    /// Deduplication id: a retried Check with the same id is not charged twice.
    #[arg(long, default_value = "")]
    dedup_id: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Server address (host:port or http://host:port).
    #[arg(long, short = 's', default_value = "127.0.0.1:9091")]
    server: String,
    /// An attribute, `name=value`, as for `check`. `request.time` and `response.time` are
    /// now unless given (access logs are keyed on them).
    #[arg(long = "attribute", short = 'a')]
    attributes: Vec<String>,
}

/// Parses `name=value` with the type the vocabulary gives `name`.
pub fn parse_attribute(arg: &str, manifest: &Manifest) -> Result<(String, Value<'static>), String> {
    let (name, text) = arg.split_once('=').ok_or_else(|| format!("{arg:?}: expected name=value"))?;
    let bad = |what: &str| format!("{name}: {text:?} is not {what}");
    let value = match manifest.type_of(name).unwrap_or(ValueType::String) {
        t if t.is_stringy() => Value::String(Cow::Owned(text.to_string())),
        ValueType::Int64 => Value::Int64(text.parse().map_err(|_| bad("an integer"))?),
        ValueType::Double => Value::Double(text.parse().map_err(|_| bad("a number"))?),
        ValueType::Bool => Value::Bool(text.parse().map_err(|_| bad("true or false"))?),
        ValueType::Timestamp => Value::Timestamp(parse_timestamp(text).ok_or_else(|| bad("an RFC 3339 time"))?),
        ValueType::Duration => Value::Duration(parse_duration(text).ok_or_else(|| bad("a duration"))?),
        ValueType::IpAddress => Value::Bytes(Cow::Owned(ip_to_bytes(text.parse().map_err(|_| bad("an IP address"))?))),
        _ => {
            let mut entries = Vec::new();
            for pair in text.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once(':').ok_or_else(|| bad("a map (k1:v1,k2:v2)"))?;
                entries.push((Cow::Owned(k.to_string()), Cow::Owned(v.to_string())));
            }
            Value::StringMap(MapVal::from(StringMap::new(entries)))
        }
    };
    Ok((name.to_string(), value))
}

fn parse_all(args: &[String]) -> Result<Vec<(String, Value<'static>)>, String> {
    let manifest = Manifest::builtin();
    args.iter().map(|a| parse_attribute(a, &manifest)).collect()
}

fn endpoint(server: &str) -> String {
    if server.contains("://") { server.to_string() } else { format!("http://{server}") }
}

/// An error with its causes: a transport error says only "transport error" by itself.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn connect(server: &str) -> Result<MixerClient<tonic::transport::Channel>, String> {
    MixerClient::connect(endpoint(server)).await.map_err(|e| format!("cannot connect to {server}: {}", with_causes(&e)))
}

/// Exit status of a denied Check.
const DENIED: u8 = 2;
/// Exit status of a Check that passed but was granted less quota than it asked for.
const QUOTA_SHORT: u8 = 3;

pub async fn check(args: CheckArgs) -> ExitCode {
    match run_check(&args).await {
        Ok(resp) => {
            print!("{}", describe_check(&resp));
            let ok = resp.precondition.as_ref().and_then(|p| p.status.as_ref()).is_none_or(|s| s.code == 0);
            let short = resp.quotas.iter().any(|(name, q)| {
                let asked = args.quotas.iter().find_map(|spec| {
                    let (n, rest) = spec.split_once('=')?;
                    (n == name).then(|| rest.split(',').next()?.parse::<i64>().ok()).flatten()
                });
                asked.is_some_and(|a| q.granted_amount < a)
            });
            if !ok {
                ExitCode::from(DENIED)
            } else if short {
                ExitCode::from(QUOTA_SHORT)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("mixr check: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_check(args: &CheckArgs) -> Result<CheckResponse, String> {
    let attrs = parse_all(&args.attributes)?;
    let mut quotas = std::collections::HashMap::new();
    for q in &args.quotas {
        let (name, rest) = q.split_once('=').ok_or_else(|| format!("{q:?}: expected name=amount"))?;
        let (amount, best_effort) = match rest.split_once(',') {
            Some((a, "best_effort")) => (a, true),
            Some((_, other)) => return Err(format!("{q:?}: unknown quota flag {other:?}")),
            None => (rest, false),
        };
        let amount = amount.parse().map_err(|_| format!("{q:?}: amount must be an integer"))?;
        quotas.insert(name.to_string(), QuotaParams { amount, best_effort });
    }
    let req = CheckRequest {
        attributes: Some(Encoder::encode_message(attrs.iter().map(|(n, v)| (n.as_str(), v)))),
        global_word_count: Encoder::global_word_count(),
        deduplication_id: args.dedup_id.clone(),
        quotas,
    };
    let mut client = connect(&args.server).await?;
    client
        .check(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{}: {}", code_name(s.code() as i32), s.message()))
}

/// Human-readable rendering of a Check answer.
pub fn describe_check(resp: &CheckResponse) -> String {
    let mut out = String::new();
    let Some(p) = &resp.precondition else {
        return "no precondition in the answer\n".into();
    };
    let status = p.status.clone().unwrap_or_default();
    out.push_str(&format!("status:        {} {}\n", code_name(status.code), status.message));
    if let Some(d) = &p.valid_duration {
        out.push_str(&format!(
            "valid for:     {}.{:03}s, {} uses\n",
            d.seconds,
            d.nanos / 1_000_000,
            p.valid_use_count
        ));
    }
    if let Some(refs) = &p.referenced_attributes {
        match decode_referenced(refs) {
            Ok(list) => {
                for r in list {
                    let key = r.map_key.map(|k| format!("[{k:?}]")).unwrap_or_default();
                    out.push_str(&format!("referenced:    {}{key} {:?}\n", r.name, r.condition));
                }
            }
            Err(e) => out.push_str(&format!("referenced:    undecodable ({e})\n")),
        }
    }
    if let Some(rd) = &p.route_directive {
        for op in &rd.request_header_operations {
            out.push_str(&format!("request hdr:   {:?} {}: {}\n", op.operation(), op.name, op.value));
        }
        for op in &rd.response_header_operations {
            out.push_str(&format!("response hdr:  {:?} {}: {}\n", op.operation(), op.name, op.value));
        }
        if rd.direct_response_code != 0 {
            out.push_str(&format!("direct reply:  {} {}\n", rd.direct_response_code, rd.direct_response_body));
        }
    }
    let mut quotas: Vec<_> = resp.quotas.iter().collect();
    quotas.sort_by(|a, b| a.0.cmp(b.0));
    for (name, q) in quotas {
        let vd = q.valid_duration.map(|d| format!("{}s", d.seconds)).unwrap_or_default();
        out.push_str(&format!("quota:         {name} granted {} (valid {vd})\n", q.granted_amount));
    }
    out
}

pub async fn report(args: ReportArgs) -> ExitCode {
    let result = async {
        let mut attrs = parse_all(&args.attributes)?;
        let now = mixr_rules::value::Timestamp {
            seconds: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            nanos: 0,
        };
        for name in ["request.time", "response.time"] {
            if !attrs.iter().any(|(n, _)| n == name) {
                attrs.push((name.to_string(), Value::Timestamp(now)));
            }
        }
        let mut enc = Encoder::new();
        let entry = enc.encode(attrs.iter().map(|(n, v)| (n.as_str(), v)));
        let req = ReportRequest {
            attributes: vec![entry],
            default_words: enc.into_words(),
            global_word_count: Encoder::global_word_count(),
            repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
        };
        let mut client = connect(&args.server).await?;
        client.report(req).await.map_err(|s| format!("{}: {}", code_name(s.code() as i32), s.message()))
    }
    .await;
    match result {
        Ok(_) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mixr report: {e}");
            ExitCode::FAILURE
        }
    }
}
