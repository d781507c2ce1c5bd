//! productpage's HTML, for browsers: the book, its details and its reviews, with stars as
//! Istio's Bookinfo drew them (reviews v1 none, v2 black, v3 red; a full star per point of
//! the rating out of five, the rest empty), and a sign-in form whose user travels to the
//! other services as `end-user`.

use serde_json::Value;

/// Whether a client asked for HTML rather than JSON: `text/html` with a higher quality
/// than `application/json`. Browsers list `text/html` first; curl and API clients send
/// `*/*` or `application/json` and keep getting JSON.
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let quality = |wanted: &str| {
        accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?;
                if !media.eq_ignore_ascii_case(wanted) {
                    return None;
                }
                let q = parts.find_map(|p| p.strip_prefix("q=")).map_or(Some(1.0), |q| q.parse::<f32>().ok())?;
                Some(q)
            })
            .fold(0.0_f32, f32::max)
    };
    let html = quality("text/html");
    html > 0.0 && html > quality("application/json")
}

/// Text for an HTML element or a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:0}\
nav{background:#222;color:#eee;padding:.6em 1em;display:flex;justify-content:space-between;align-items:center}\
nav a{color:#9cf}main{padding:0 1em}.columns{display:flex;gap:3em;flex-wrap:wrap}\
.columns>section{flex:1;min-width:20em}dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1em}\
dt{font-weight:bold}dd{margin:0}.review{border-left:4px solid #ccc;margin:1em 0;padding:0 1em}\
.reviewer{color:#555}.rating{font-size:1.4em;margin:.2em 0}.error{color:#a00}.served-by{color:#666;font-size:.9em}";

const SUMMARY: &str = "Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays. \
It is his shortest and one of his most farcical comedies, with a major part of the humour coming from \
slapstick and mistaken identity, in addition to puns and word play.";

/// The page for `user` (signed in, or `None`), from the JSON productpage also serves:
/// `{"product", "details", "reviews"}` as `services` builds it.
pub fn render(user: Option<&str>, product: &Value) -> String {
    let title = product["product"].as_str().unwrap_or("The Comedy of Errors");
    let mut html = String::with_capacity(4096);
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Simple Bookstore App</title>",
    );
    html.push_str(&format!("<style>{STYLE}</style></head>\n<body>\n<nav><span>BookInfo Sample</span>"));
    match user {
        Some(u) => html.push_str(&format!(
            "<span>signed in as <b id=\"user\">{}</b> <a href=\"/logout\">sign out</a></span>",
            escape(u)
        )),
        None => html.push_str(
            "<form id=\"login\" method=\"post\" action=\"/login\"><input name=\"username\" \
             placeholder=\"User name\" required> <button type=\"submit\">Sign in</button></form>",
        ),
    }
    html.push_str(&format!(
        "</nav>\n<main>\n<h1 id=\"product\">{}</h1>\n<p id=\"summary\">{}</p>\n<div class=\"columns\">\n",
        escape(title),
        escape(SUMMARY)
    ));
    details(&mut html, &product["details"]);
    reviews(&mut html, &product["reviews"]);
    html.push_str("</div>\n</main>\n</body>\n</html>\n");
    html
}

fn details(html: &mut String, details: &Value) {
    html.push_str("<section id=\"details\"><h2>Book Details</h2>");
    if let Some(e) = details["error"].as_str() {
        html.push_str(&format!("<p class=\"error\">{}</p></section>\n", escape(e)));
        return;
    }
    html.push_str("<dl>");
    for (label, key) in [
        ("Author", "author"),
        ("Year", "year"),
        ("Type", "type"),
        ("Pages", "pages"),
        ("Publisher", "publisher"),
        ("Language", "language"),
        ("ISBN-10", "ISBN-10"),
        ("ISBN-13", "ISBN-13"),
    ] {
        let value = match &details[key] {
            Value::String(s) => s.clone(),
            Value::Null => continue,
            other => other.to_string(),
        };
        html.push_str(&format!("<dt>{label}:</dt><dd>{}</dd>", escape(&value)));
    }
    html.push_str("</dl></section>\n");
}

fn reviews(html: &mut String, reviews: &Value) {
    html.push_str("<section id=\"reviews\"><h2>Book Reviews</h2>\n");
    if let Some(e) = reviews["error"].as_str() {
        html.push_str(&format!("<p class=\"error\">{}</p></section>\n", escape(e)));
        return;
    }
    for review in reviews["reviews"].as_array().map(Vec::as_slice).unwrap_or_default() {
        html.push_str(&format!(
            "<blockquote class=\"review\"><p class=\"text\">{}</p><footer class=\"reviewer\">{}</footer>",
            escape(review["text"].as_str().unwrap_or_default()),
            escape(review["reviewer"].as_str().unwrap_or_default())
        ));
        let rating = &review["rating"];
        if let Some(e) = rating["error"].as_str() {
            html.push_str(&format!("<p class=\"rating error\">{}</p>", escape(e)));
        } else if let Some(stars) = rating["stars"].as_u64() {
            // Istio's v2 drew black stars and v3 red ones; anything else is not a colour.
            let color = match rating["color"].as_str() {
                Some("red") => "red",
                _ => "black",
            };
            let full = stars.min(5) as usize;
            html.push_str(&format!(
                "<p class=\"rating\" style=\"color: {color}\" title=\"{stars} of 5\">{}{}</p>",
                "\u{2605}".repeat(full),
                "\u{2606}".repeat(5 - full)
            ));
        }
        html.push_str("</blockquote>\n");
    }
    if let Some(pod) = reviews["podname"].as_str() {
        html.push_str(&format!(
            "<p class=\"served-by\">Reviews served by: <span id=\"served-by\">{}</span></p>",
            escape(pod)
        ));
    }
    html.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn browsers_get_html_and_api_clients_json() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(Some(firefox)));
        assert!(wants_html(Some("text/html")));
        assert!(!wants_html(None));
        assert!(!wants_html(Some("*/*")));
        assert!(!wants_html(Some("application/json")));
        assert!(!wants_html(Some("application/json, text/html;q=0.5")));
        assert!(!wants_html(Some("text/html;q=0")));
        assert!(!wants_html(Some("text/html;q=bogus")));
    }

    #[test]
    fn what_callers_send_is_escaped() {
        let product = json!({"product": "x", "details": {"author": "<i>A</i>"}, "reviews": {
            "podname": "reviews-v2",
            "reviews": [{"reviewer": "R\"1", "text": "a < b & c", "rating": {"error": "<script>"}}]}});
        let page = render(Some("<img src=x onerror=alert(1)>"), &product);
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
        assert!(page.contains("&lt;i&gt;A&lt;/i&gt;"));
        assert!(page.contains("a &lt; b &amp; c"));
        assert!(page.contains("R&quot;1"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(!page.contains("<script>") && !page.contains("<img"));
    }

    #[test]
    fn stars_by_version() {
        let with = |rating: Value| {
            render(None, &json!({"reviews": {"reviews": [{"reviewer": "R", "text": "t", "rating": rating}]}}))
        };
        let black = with(json!({"stars": 4, "color": "black"}));
        assert!(black.contains("<p class=\"rating\" style=\"color: black\" title=\"4 of 5\">★★★★☆</p>"), "{black}");
        let red = with(json!({"stars": 5, "color": "red"}));
        assert!(red.contains("style=\"color: red\" title=\"5 of 5\">★★★★★</p>"), "{red}");
        let none = render(None, &json!({"reviews": {"reviews": [{"reviewer": "R", "text": "t"}]}}));
        assert!(!none.contains("class=\"rating"), "{none}");
        assert!(none.contains("<form id=\"login\" method=\"post\" action=\"/login\">"));
    }
}
