//! The protobuf contracts every service compiles against.
//!
//! `tcc.v1.Participant` is the one RPC each participant serves (docs/design.md §2); `tcc.v1.Coordinator`
//! is the coordinator's API (docs/design.md §3). Both live in one package so a participant's tests can
//! start a coordinator and a coordinator's tests can script participants with the same types.
//! Code is generated at build time with a vendored `protoc`.

#![allow(missing_debug_implementations)]

/// `tcc.v1`: messages, clients (`*_client`) and servers (`*_server`), used as `proto::v1`. The
/// module is named for what it is, the wire form, not after the package (a module `tcc` here
/// read like the `tcc` crate).
pub mod wire {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("tcc.v1");
    }
}

/// `pay.v1`: the branch payloads of the three participant services.
pub mod pay {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic)]
        tonic::include_proto!("pay.v1");
    }
}

pub use wire::v1;

use v1::Outcome;

impl v1::BranchResponse {
    pub fn success() -> Self {
        v1::BranchResponse {
            outcome: Outcome::Success as i32,
            code: String::new(),
            message: String::new(),
        }
    }

    pub fn failure(code: impl Into<String>, message: impl Into<String>) -> Self {
        v1::BranchResponse {
            outcome: Outcome::Failure as i32,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl v1::BranchResult {
    /// One batch item's answer: what `Branch` would have answered, an error as its status.
    pub fn from_call(result: Result<v1::BranchResponse, tonic::Status>) -> Self {
        use v1::branch_result::Result as R;
        v1::BranchResult {
            result: Some(match result {
                Ok(response) => R::Response(response),
                Err(status) => R::Error(v1::BranchError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                }),
            }),
        }
    }

    /// Back to what a `Branch` call gives; an item with nothing in it is an error.
    pub fn into_call(self) -> Result<v1::BranchResponse, tonic::Status> {
        use v1::branch_result::Result as R;
        match self.result {
            Some(R::Response(response)) => Ok(response),
            Some(R::Error(e)) => Err(tonic::Status::new(tonic::Code::from_i32(e.code), e.message)),
            None => Err(tonic::Status::unknown(
                "the batch answer has nothing for this branch",
            )),
        }
    }
}

/// Whether a gRPC status from a branch call is worth retrying (docs/design.md §2).
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Op;

    #[test]
    fn transport_failures_are_transient_and_rejections_are_not() {
        assert!(is_transient(&tonic::Status::unavailable("down")));
        assert!(is_transient(&tonic::Status::deadline_exceeded("slow")));
        assert!(!is_transient(&tonic::Status::invalid_argument("bad")));
        assert!(!is_transient(&tonic::Status::not_found("no such account")));
    }

    #[test]
    fn a_branch_request_survives_encoding() {
        use prost::Message;
        let req = v1::BranchRequest {
            gid: u64::MAX >> 1,
            branch_id: "payment".into(),
            op: Op::Cancel as i32,
            payload: vec![1, 2, 3],
        };
        let back = v1::BranchRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, req);
        assert_eq!(back.op(), Op::Cancel);
    }
}
