//! Who is asking: the `end-user` header (API clients, and every call between services), or
//! the user signed in on productpage's form, kept in a cookie as Istio's productpage kept
//! it in its session. That name becomes `end-user` on productpage's calls, which is what
//! the traffic rules for jason match.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

const COOKIE: &str = "user";
/// A sign-in form is a user name: anything longer is not one.
const MAX_FORM_BYTES: usize = 1024;

/// A user name worth forwarding: short, and only characters that need no quoting in a
/// cookie or a header.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The request's user: its `end-user` header, else its signed-in cookie.
pub fn of<B>(req: &Request<B>) -> Option<String> {
    if let Some(u) = req.headers().get("end-user").and_then(|v| v.to_str().ok()) {
        return Some(u.to_string());
    }
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == COOKIE && valid_name(v))
        .map(|(_, v)| v.to_string())
}

/// `POST /login` with the form's `username`: signs in and goes back to the product page.
pub async fn login(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_FORM_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return text(413, "the sign-in form is too large\n"),
    };
    let name = form_value(&String::from_utf8_lossy(&body), "username");
    match name {
        Some(name) if valid_name(&name) => back_to_page(&format!("{COOKIE}={name}; Path=/; HttpOnly; SameSite=Lax")),
        _ => text(400, "a user name is 1 to 64 letters, digits, '.', '_' or '-'\n"),
    }
}

/// `GET /logout`: forgets the user.
pub fn logout() -> Response<Full<Bytes>> {
    back_to_page(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"))
}

fn back_to_page(cookie: &str) -> Response<Full<Bytes>> {
    let mut r = text(303, "");
    r.headers_mut().insert(hyper::header::LOCATION, hyper::header::HeaderValue::from_static("/productpage"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(cookie) {
        r.headers_mut().insert(hyper::header::SET_COOKIE, v);
    }
    r
}

fn text(status: u16, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
    r
}

/// One field of an `application/x-www-form-urlencoded` body, decoded; `None` when absent
/// or not valid percent-encoding.
fn form_value(body: &str, key: &str) -> Option<String> {
    let raw = body.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))?;
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(form_value("username=jason", "username").as_deref(), Some("jason"));
        assert_eq!(form_value("a=1&username=j%2Ds+x", "username").as_deref(), Some("j-s x"));
        assert_eq!(form_value("username=%4", "username"), None);
        assert_eq!(form_value("username=%zz", "username"), None);
        assert_eq!(form_value("user=jason", "username"), None);
    }

    #[test]
    fn names_that_could_break_a_header_or_cookie_are_refused() {
        assert!(valid_name("jason") && valid_name("a.b_c-9"));
        for bad in ["", "a b", "a;b", "a=b", "<b>", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_header_wins_over_the_cookie() {
        let req = |headers: &[(&str, &str)]| {
            let mut b = Request::builder();
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        assert_eq!(of(&req(&[("cookie", "a=1; user=jason")])).as_deref(), Some("jason"));
        assert_eq!(of(&req(&[("end-user", "ann"), ("cookie", "user=jason")])).as_deref(), Some("ann"));
        assert_eq!(of(&req(&[("cookie", "user=<b>")])), None);
        assert_eq!(of(&req(&[])), None);
    }
}
