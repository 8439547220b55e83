//! A request that does not decode (invalid UTF-8 where a string belongs, a
//! varint where a string belongs) is the caller's error, not the server's:
//! tonic answers it `INTERNAL`; this says `INVALID_ARGUMENT`, so that a
//! client neither retries it nor pages anyone over it.

use tonic::codegen::http;

/// The start of tonic's message for a request body that is not the method's message.
const DECODE_FAILURE: &str = "failed to decode Protobuf message";

/// Rewrites a trailers-only `INTERNAL` answer caused by an undecodable request.
pub fn decode_errors_are_invalid_arguments<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|s| s.as_bytes() == b"13");
    let decode = headers.get("grpc-message").is_some_and(|m| {
        // grpc-message is percent-encoded: spaces are %20.
        m.to_str().is_ok_and(|m| m.replace("%20", " ").starts_with(DECODE_FAILURE))
    });
    if internal && decode {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &'static str, message: &'static str) -> http::Response<()> {
        let mut response = http::Response::new(());
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(status));
        response.headers_mut().insert("grpc-message", http::HeaderValue::from_static(message));
        response
    }

    #[test]
    fn only_an_undecodable_request_becomes_invalid_argument() {
        let code = |r: http::Response<()>| r.headers()["grpc-status"].to_str().map(str::to_owned).unwrap_or_default();
        let undecodable = answer("13", "failed%20to%20decode%20Protobuf%20message:%20invalid%20string");
        assert_eq!(code(decode_errors_are_invalid_arguments(undecodable)), "3");
        let other = answer("13", "storage%20failure");
        assert_eq!(code(decode_errors_are_invalid_arguments(other)), "13");
        let not_internal = answer("5", "failed%20to%20decode%20Protobuf%20message");
        assert_eq!(code(decode_errors_are_invalid_arguments(not_internal)), "5");
    }
}
