//! The baseline server: same service, same request decoding, fixed OK answer.

use std::path::Path;
use std::process::ExitCode;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest as AuthzCheckRequest, CheckResponse as AuthzCheckResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::DescriptorStatus;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use mixr_proto::google::rpc;
use mixr_proto::istio::mixer::v1::check_response::PreconditionResult;
use mixr_proto::istio::mixer::v1::mixer_server::{Mixer, MixerServer};
use mixr_proto::istio::mixer::v1::{CheckRequest, CheckResponse, ReportRequest, ReportResponse};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct Noop;

#[tonic::async_trait]
impl Mixer for Noop {
    async fn check(&self, _: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            precondition: Some(PreconditionResult {
                status: Some(rpc::Status::default()),
                valid_duration: Some(prost_duration()),
                valid_use_count: 10000,
                ..Default::default()
            }),
            quotas: Default::default(),
        }))
    }

    async fn report(&self, _: Request<ReportRequest>) -> Result<Response<ReportResponse>, Status> {
        Ok(Response::new(ReportResponse {}))
    }
}

fn prost_duration() -> prost_types::Duration {
    prost_types::Duration { seconds: 60, nanos: 0 }
}

#[tonic::async_trait]
impl RateLimitService for Noop {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let statuses =
            request.get_ref().descriptors.iter().map(|_| DescriptorStatus { code: 1, ..Default::default() }).collect();
        Ok(Response::new(RateLimitResponse { overall_code: 1, statuses, ..Default::default() }))
    }
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: Request<AuthzCheckRequest>) -> Result<Response<AuthzCheckResponse>, Status> {
        Ok(Response::new(AuthzCheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

pub fn run(addr_file: &Path) -> ExitCode {
    // A subscriber that takes nothing, as mixr's filtered one takes nothing on the call
    // path. Without any subscriber, `tracing` (whose `log` feature is on when the workspace's
    // binaries are built together) hands every span of h2, hyper and tonic to the `log` crate: about 10,000
    // instructions per call that mixr does not spend, which made this baseline slower than
    // a no-op should be.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    let result: Result<(), Box<dyn std::error::Error>> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        std::fs::write(addr_file, format!("grpc={}\n", listener.local_addr()?))?;
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(MixerServer::new(Noop))
            .add_service(RateLimitServiceServer::new(Noop))
            .add_service(AuthorizationServer::new(Noop))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("noop server: {e}");
            ExitCode::FAILURE
        }
    }
}
