//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: a workload's CSR, signed for
//! the service account its bootstrap token (`authorization: Bearer TOKEN`) stands for.
//! Refusals are logged with the caller's address and the reason, never the request.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mixr_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use mixr_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use prometheus::IntCounterVec;
use tonic::{Request, Response};

use super::status::CallError;
use crate::ca::Authority;
use crate::ca::tokens::TokenStore;
use crate::metrics::code_name;

#[derive(Debug, Clone)]
pub struct CaService {
    authority: Arc<Authority>,
    tokens: Arc<ArcSwap<TokenStore>>,
    results: IntCounterVec,
}

impl CaService {
    pub fn new(
        authority: Arc<Authority>,
        tokens: Arc<ArcSwap<TokenStore>>,
        registry: &prometheus::Registry,
    ) -> CaService {
        let results = IntCounterVec::new(
            prometheus::Opts::new("mixr_ca_requests_total", "Certificate requests, by result."),
            &["result"],
        )
        .expect("valid metric");
        if let Err(e) = registry.register(Box::new(results.clone())) {
            tracing::error!(error = %e, "CA metric not registered");
        }
        CaService { authority, tokens, results }
    }

    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    fn create(&self, req: &Request<IstioCertificateRequest>) -> Result<IstioCertificateResponse, CallError> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(CallError::Unauthenticated("a bootstrap token is required (authorization: Bearer TOKEN)"))?;
        let tokens = self.tokens.load();
        let account = tokens.identify(token.trim()).ok_or(CallError::Unauthenticated("unknown bootstrap token"))?;
        let body = req.get_ref();
        let requested = u64::try_from(body.validity_duration).ok().map(Duration::from_secs);
        let cert_chain = self.authority.sign(&body.csr, account, requested)?;
        tracing::info!(service_account = %account, "workload certificate issued");
        Ok(IstioCertificateResponse { cert_chain })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, tonic::Status> {
        match self.create(&request) {
            Ok(resp) => {
                self.results.with_label_values(&["issued"]).inc();
                Ok(Response::new(resp))
            }
            Err(e) => {
                let status = tonic::Status::from(e);
                self.results.with_label_values(&[code_name(status.code() as i32)]).inc();
                tracing::warn!(peer = ?request.remote_addr(), code = ?status.code(), reason = status.message(), "certificate request refused");
                Err(status)
            }
        }
    }
}
