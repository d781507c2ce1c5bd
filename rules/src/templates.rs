//! Templates: what an instance is built from, and which adapter variety consumes it.

use crate::value::ValueType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variety {
    Check,
    Quota,
    Report,
    /// Mixer's APA: adapters that produce attributes before Check and Report dispatch.
    AttributeGenerator,
}

/// The type an instance field's expression must produce; `None` accepts any type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Expr(Option<ValueType>),
    Map(Option<ValueType>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub kind: FieldKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Template {
    CheckNothing,
    ListEntry,
    Quota,
    Metric,
    LogEntry,
    TraceSpan,
    /// Pod facts for `kubernetesenv`: inputs name pods by uid or IP, outputs describe them.
    Kubernetes,
}

const fn expr(name: &'static str, ty: Option<ValueType>) -> Field {
    Field { name, kind: FieldKind::Expr(ty) }
}

const fn map(name: &'static str) -> Field {
    Field { name, kind: FieldKind::Map(None) }
}

const STR: Option<ValueType> = Some(ValueType::String);
const TIME: Option<ValueType> = Some(ValueType::Timestamp);
const INT: Option<ValueType> = Some(ValueType::Int64);
const BOOL: Option<ValueType> = Some(ValueType::Bool);
const IP: Option<ValueType> = Some(ValueType::IpAddress);

const LISTENTRY_FIELDS: &[Field] = &[expr("value", None)];
const QUOTA_FIELDS: &[Field] = &[map("dimensions")];
const METRIC_FIELDS: &[Field] = &[
    expr("value", None),
    map("dimensions"),
    expr("monitored_resource_type", STR),
    map("monitored_resource_dimensions"),
];
const LOGENTRY_FIELDS: &[Field] = &[
    expr("severity", STR),
    expr("timestamp", TIME),
    map("variables"),
    expr("monitored_resource_type", STR),
    map("monitored_resource_dimensions"),
];
const KUBERNETES_FIELDS: &[Field] = &[
    expr("source_uid", STR),
    expr("source_ip", IP),
    expr("destination_uid", STR),
    expr("destination_ip", IP),
    expr("destination_port", INT),
    // Older charts pass the origin too; accepted and not looked up.
    expr("origin_uid", STR),
    expr("origin_ip", IP),
];

/// What the `kubernetes` template's adapter may produce, for `$out.FIELD` in bindings.
const KUBERNETES_OUTPUTS: &[(&str, ValueType)] = {
    use ValueType::{IpAddress as I, String as S, StringMap as M};
    &[
        ("source_pod_uid", S),
        ("source_pod_ip", I),
        ("source_pod_name", S),
        ("source_labels", M),
        ("source_namespace", S),
        ("source_service_account_name", S),
        ("source_host_ip", I),
        ("source_workload_uid", S),
        ("source_workload_name", S),
        ("source_workload_namespace", S),
        ("source_owner", S),
        ("destination_pod_uid", S),
        ("destination_pod_ip", I),
        ("destination_pod_name", S),
        ("destination_container_name", S),
        ("destination_labels", M),
        ("destination_namespace", S),
        ("destination_service_account_name", S),
        ("destination_host_ip", I),
        ("destination_owner", S),
        ("destination_workload_uid", S),
        ("destination_workload_name", S),
        ("destination_workload_namespace", S),
    ]
};

const TRACESPAN_FIELDS: &[Field] = &[
    expr("trace_id", STR),
    expr("span_id", STR),
    expr("parent_span_id", STR),
    expr("span_name", STR),
    expr("start_time", TIME),
    expr("end_time", TIME),
    map("span_tags"),
    expr("http_status_code", INT),
    expr("client_span", BOOL),
    expr("rewrite_client_span_id", BOOL),
    expr("source_name", STR),
    expr("source_ip", IP),
    expr("destination_name", STR),
    expr("destination_ip", IP),
    expr("request_size", INT),
    expr("request_total_size", INT),
    expr("response_size", INT),
    expr("response_total_size", INT),
    expr("api_protocol", STR),
];

impl Template {
    pub const ALL: [Template; 7] = [
        Template::CheckNothing,
        Template::ListEntry,
        Template::Quota,
        Template::Metric,
        Template::LogEntry,
        Template::TraceSpan,
        Template::Kubernetes,
    ];

    pub fn parse(name: &str) -> Option<Template> {
        Template::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Template::CheckNothing => "checknothing",
            Template::ListEntry => "listentry",
            Template::Quota => "quota",
            Template::Metric => "metric",
            Template::LogEntry => "logentry",
            Template::TraceSpan => "tracespan",
            Template::Kubernetes => "kubernetes",
        }
    }

    pub fn variety(self) -> Variety {
        match self {
            Template::CheckNothing | Template::ListEntry => Variety::Check,
            Template::Quota => Variety::Quota,
            Template::Metric | Template::LogEntry | Template::TraceSpan => Variety::Report,
            Template::Kubernetes => Variety::AttributeGenerator,
        }
    }

    /// The instance params a template accepts (snake_case names).
    pub fn fields(self) -> &'static [Field] {
        match self {
            Template::CheckNothing => &[],
            Template::ListEntry => LISTENTRY_FIELDS,
            Template::Quota => QUOTA_FIELDS,
            Template::Metric => METRIC_FIELDS,
            Template::LogEntry => LOGENTRY_FIELDS,
            Template::TraceSpan => TRACESPAN_FIELDS,
            Template::Kubernetes => KUBERNETES_FIELDS,
        }
    }

    /// Output fields of an attribute-generating template (empty for the others).
    pub fn outputs(self) -> &'static [(&'static str, ValueType)] {
        match self {
            Template::Kubernetes => KUBERNETES_OUTPUTS,
            _ => &[],
        }
    }
}
