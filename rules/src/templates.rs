//! Templates: what an instance is built from, and which adapter variety consumes it.

use crate::value::ValueType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variety {
    Check,
    Quota,
    Report,
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
    pub const ALL: [Template; 6] = [
        Template::CheckNothing,
        Template::ListEntry,
        Template::Quota,
        Template::Metric,
        Template::LogEntry,
        Template::TraceSpan,
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
        }
    }

    pub fn variety(self) -> Variety {
        match self {
            Template::CheckNothing | Template::ListEntry => Variety::Check,
            Template::Quota => Variety::Quota,
            Template::Metric | Template::LogEntry | Template::TraceSpan => Variety::Report,
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
        }
    }
}
