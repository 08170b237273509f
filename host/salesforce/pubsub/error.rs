//! Why a stream failed, from its `error-code` trailer (then its gRPC status), and so what
//! the subscriber does next.

use tonic::Status;

/// How the subscriber reacts to a stream failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Auth,
    ReplayInvalid,
    TopicNotFound,
    NoPermission,
    LimitExceeded,
    /// Another client reads the managed subscription.
    ManagedInUse,
    Transient,
}

/// Salesforce's words when another client holds a managed subscription; its status code and
/// trailer for this are not documented.
pub(crate) const MANAGED_IN_USE: &str =
    "active managed subscription with the same id already exists";

/// Classifies a failed RPC by its `error-code` trailer, falling back to the gRPC status.
pub fn classify(status: &Status) -> Failure {
    let code = status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if status
        .message()
        .to_ascii_lowercase()
        .contains(MANAGED_IN_USE)
    {
        Failure::ManagedInUse
    } else if code.contains("replayid") {
        Failure::ReplayInvalid
    } else if code.contains("auth.error")
        || code.contains("auth.refresh")
        || code.contains("auth.token")
    {
        Failure::Auth
    } else if code.contains("topic") && (code.contains("not.found") || code.contains("notfound")) {
        Failure::TopicNotFound
    } else if code.contains("permission")
        || code.contains("insufficient")
        || code.contains("access.denied")
    {
        Failure::NoPermission
    } else if code.contains("limit") || code.contains("exceeded") {
        Failure::LimitExceeded
    } else if !code.is_empty() {
        Failure::Transient
    } else {
        match status.code() {
            tonic::Code::Unauthenticated => Failure::Auth,
            tonic::Code::PermissionDenied => Failure::NoPermission,
            tonic::Code::NotFound => Failure::TopicNotFound,
            tonic::Code::ResourceExhausted => Failure::LimitExceeded,
            _ => Failure::Transient,
        }
    }
}

/// The trailer Salesforce names a failure by, else the gRPC status code.
pub fn error_code(status: &Status) -> String {
    status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| format!("{:?}", status.code()), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(code: tonic::Code, error_code: &str) -> Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("error-code", error_code.parse().unwrap());
        Status::with_metadata(code, "x", metadata)
    }

    #[test]
    fn a_managed_subscription_in_use_is_recognised_by_salesforces_words() {
        let status = Status::failed_precondition(crate::sim::pubsub::MANAGED_IN_USE);
        assert_eq!(classify(&status), Failure::ManagedInUse);
        assert_eq!(
            classify(&Status::failed_precondition("something else")),
            Failure::Transient
        );
    }

    #[test]
    fn failures_are_classified_by_trailer_then_status() {
        let cases = [
            (
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
                Failure::ReplayInvalid,
            ),
            (
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed",
                Failure::ReplayInvalid,
            ),
            (
                "sfdc.platform.eventbus.grpc.service.auth.error",
                Failure::Auth,
            ),
            (
                "sfdc.platform.eventbus.grpc.topic.not.found",
                Failure::TopicNotFound,
            ),
            (
                "sfdc.platform.eventbus.grpc.subscription.limit.exceeded",
                Failure::LimitExceeded,
            ),
            (
                "sfdc.platform.eventbus.grpc.service.unavailable",
                Failure::Transient,
            ),
            (
                "sfdc.platform.eventbus.grpc.topic.permission.denied",
                Failure::NoPermission,
            ),
        ];
        for (code, want) in cases {
            assert_eq!(
                classify(&status_with(tonic::Code::Internal, code)),
                want,
                "{code}"
            );
        }
        assert_eq!(classify(&Status::unauthenticated("x")), Failure::Auth);
        assert_eq!(
            classify(&Status::permission_denied("x")),
            Failure::NoPermission
        );
        assert_eq!(classify(&Status::not_found("x")), Failure::TopicNotFound);
        assert_eq!(
            classify(&Status::resource_exhausted("x")),
            Failure::LimitExceeded
        );
        assert_eq!(classify(&Status::unavailable("x")), Failure::Transient);
        assert_eq!(
            classify(&Status::internal("RST_STREAM")),
            Failure::Transient
        );
    }
}
