//! Who this sidecar is: the workload whose traffic it carries. Feeds `source.*` (outbound)
//! and `destination.*` (inbound) attributes and `sourceLabels` matches.

#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub workload: String,
    pub namespace: String,
    pub labels: Vec<(String, String)>,
}

impl Identity {
    pub fn uid(&self) -> String {
        format!("kubernetes://{}.{}", self.workload, self.namespace)
    }
}
