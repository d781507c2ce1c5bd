//! `istio.mixer.v1.Mixer`: Check and Report on the wire.

use std::sync::OnceLock;
use std::time::Instant;

use mixr_proto::DIRECT_HTTP_RESPONSE_TYPE_URL;
use mixr_proto::google::rpc;
use mixr_proto::istio::mixer::v1::check_response::{PreconditionResult, QuotaResult};
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_proto::istio::mixer::v1::{CheckResponse, HeaderOperation, ReportResponse, RouteDirective, header_operation};
use mixr_proto::lazy_server::mixer_server::{Mixer, MixerServer};
use mixr_proto::mixr::server::v1::{LazyCheckRequest, LazyReportRequest};
use mixr_rules::bag::Bag;
use mixr_rules::bag::decode_check;
use mixr_rules::bag::report::{ChunkSink, ReportEncoding, for_each_chunk};

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use mixr_rules::config::model::HeaderOpKind;
use prost::Message;
use tonic::{Request, Response};

use tracing::Instrument;

use super::Shared;
use super::status::CallError;
use super::trace::rpc_span;
use crate::dispatch::quota::{self, Selection};
use crate::dispatch::{self, CheckOutcome, HeaderOp};
use crate::metrics::MethodMetrics;

/// Report entries decoded and dispatched together: large enough to batch adapter calls,
/// small enough that a Report of any size costs little memory beyond its own message.
const REPORT_CHUNK: usize = 256;

#[derive(Debug, Clone)]
pub struct MixerService {
    shared: Shared,
    check_metrics: MethodMetrics,
    report_metrics: MethodMetrics,
}

impl MixerService {
    pub fn new(shared: Shared) -> MixerService {
        MixerService {
            check_metrics: MethodMetrics::new(&shared.metrics, "mixer", "check"),
            report_metrics: MethodMetrics::new(&shared.metrics, "mixer", "report"),
            shared,
        }
    }

    pub fn into_server(self) -> MixerServer<MixerService> {
        MixerServer::new(self)
    }

    async fn check_inner(&self, req: &LazyCheckRequest) -> Result<CheckResponse, CallError> {
        // Holds the attributes only if they need prost's decoding (unusual or bad input).
        let decoded = OnceLock::new();
        if req.quotas.is_empty() {
            // No waiting ahead: the cheaper, borrowed view of the config suffices.
            let rt = self.shared.store.current();
            let mut bag = decode_check(&req.attributes, req.global_word_count, &rt.snapshot.manifest, &decoded)?;
            let generated = dispatch::generate(&rt, &bag, &self.shared.metrics);
            generated.apply(&mut bag);
            let mut outcome = dispatch::check(&rt, &bag, &self.shared.metrics);
            generated.fix_referenced(&mut outcome.referenced);
            return Ok(encode_check(&outcome, req.global_word_count));
        }
        let rt = self.shared.store.current_full();
        let mut bag = decode_check(&req.attributes, req.global_word_count, &rt.snapshot.manifest, &decoded)?;
        let generated = dispatch::generate(&rt, &bag, &self.shared.metrics);
        generated.apply(&mut bag);
        let mut outcome = dispatch::check(&rt, &bag, &self.shared.metrics);
        generated.fix_referenced(&mut outcome.referenced);
        let mut resp = encode_check(&outcome, req.global_word_count);
        // Quotas are only charged when the precondition passed.
        if outcome.status.is_ok() {
            let mut names: Vec<_> = req.quotas.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (name, params) in names {
                let mut q = quota::allocate(
                    &rt,
                    &bag,
                    &outcome.matched_rules,
                    Selection::Named(name),
                    params.amount,
                    params.best_effort,
                    &req.deduplication_id,
                    &self.shared.metrics,
                    &self.shared.unconfigured,
                )
                .await;
                generated.fix_referenced(&mut q.referenced);
                resp.quotas.insert(
                    name.clone(),
                    QuotaResult {
                        valid_duration: Some(prost_duration(q.valid_duration)),
                        granted_amount: q.granted,
                        referenced_attributes: Some(q.referenced.to_proto(req.global_word_count)),
                        status: Some(rpc::Status {
                            code: q.status.code,
                            message: q.status.message,
                            details: Vec::new(),
                        }),
                    },
                );
            }
        }
        Ok(resp)
    }

    fn report_inner(&self, req: &LazyReportRequest) -> Result<(), CallError> {
        let rt = self.shared.store.current();
        let encoding = ReportEncoding {
            default_words: &req.default_words,
            global_word_count: req.global_word_count,
            delta: req.repeated_attributes_semantics != RepeatedAttributesSemantics::IndependentEncoding as i32,
        };
        let metrics = &self.shared.metrics;
        let mut sink = Dispatch { rt: &rt, metrics };
        let entries = for_each_chunk(&req.attributes, encoding, &rt.snapshot.manifest, REPORT_CHUNK, &mut sink)?;
        metrics.report_entries.with_label_values(&["mixer"]).inc_by(entries as u64);
        Ok(())
    }
}

/// Generates attributes for, and dispatches, one chunk of a Report.
struct Dispatch<'n> {
    rt: &'n Runtime,
    metrics: &'n Metrics,
}

impl<'n> ChunkSink<'n> for Dispatch<'n> {
    fn chunk<'c>(&mut self, bags: &mut Vec<Bag<'c>>)
    where
        'n: 'c,
    {
        for bag in bags.iter_mut() {
            dispatch::generate(self.rt, bag, self.metrics).apply(bag);
        }
        dispatch::report(self.rt, bags, self.metrics);
    }
}

fn encode_ops(ops: &[HeaderOp]) -> Vec<HeaderOperation> {
    ops.iter()
        .map(|op| HeaderOperation {
            name: op.name.clone(),
            value: op.value.clone(),
            operation: match op.operation {
                HeaderOpKind::Replace => header_operation::Operation::Replace,
                HeaderOpKind::Remove => header_operation::Operation::Remove,
                HeaderOpKind::Append => header_operation::Operation::Append,
            } as i32,
        })
        .collect()
}

pub fn prost_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs().min(i64::MAX as u64) as i64, nanos: d.subsec_nanos() as i32 }
}

/// Builds the wire answer. Referenced attributes use only the caller's global words.
pub fn encode_check(outcome: &CheckOutcome<'_>, global_word_count: u32) -> CheckResponse {
    let status = &outcome.status;
    let mut details = Vec::new();
    let mut directive = RouteDirective {
        request_header_operations: encode_ops(&outcome.request_header_ops),
        response_header_operations: encode_ops(&outcome.response_header_ops),
        ..Default::default()
    };
    if let Some(dr) = &status.direct_response {
        details
            .push(prost_types::Any { type_url: DIRECT_HTTP_RESPONSE_TYPE_URL.to_string(), value: dr.encode_to_vec() });
        directive.direct_response_code = dr.code as u32;
        directive.direct_response_body = dr.body.clone();
    }
    let has_directive = directive != RouteDirective::default();
    CheckResponse {
        precondition: Some(PreconditionResult {
            status: Some(rpc::Status { code: status.code, message: status.message.clone(), details }),
            valid_duration: Some(prost_duration(outcome.valid_duration)),
            valid_use_count: outcome.valid_use_count,
            referenced_attributes: Some(outcome.referenced.to_proto(global_word_count)),
            route_directive: has_directive.then_some(directive),
        }),
        quotas: Default::default(),
    }
}

#[tonic::async_trait]
impl Mixer for MixerService {
    async fn check(&self, request: Request<LazyCheckRequest>) -> Result<Response<CheckResponse>, tonic::Status> {
        let _call = self.shared.in_flight.enter();
        let started = Instant::now();
        let span = rpc_span("istio.mixer.v1.Mixer/Check", request.metadata());
        match self.check_inner(request.get_ref()).instrument(span).await {
            Ok(resp) => {
                let code = resp.precondition.as_ref().and_then(|p| p.status.as_ref()).map_or(0, |s| s.code);
                self.check_metrics.observe(code, started);
                Ok(Response::new(resp))
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                self.check_metrics.observe(status.code() as i32, started);
                Err(status)
            }
        }
    }

    async fn report(&self, request: Request<LazyReportRequest>) -> Result<Response<ReportResponse>, tonic::Status> {
        let _call = self.shared.in_flight.enter();
        let started = Instant::now();
        let span = rpc_span("istio.mixer.v1.Mixer/Report", request.metadata());
        match span.in_scope(|| self.report_inner(request.get_ref())) {
            Ok(()) => {
                self.report_metrics.observe(0, started);
                Ok(Response::new(ReportResponse {}))
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                self.report_metrics.observe(status.code() as i32, started);
                Err(status)
            }
        }
    }
}
