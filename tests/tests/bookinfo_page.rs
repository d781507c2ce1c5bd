//! Bookinfo's product page in a real browser: headless Chromium (Debian's `chromium`,
//! installed by .ci/services.sh) loads /productpage through productpage's sidecar, signs in
//! through the page's form as jason, and the rendered DOM shows each reviews version as
//! Istio's Bookinfo did: v1 no stars, v2 black stars, v3 red stars.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mixr_bookinfo::topology::{Options, Scenario, Topology};

/// The rendered DOM of `url` (`--dump-dom`), from a fresh profile; at most 60 s.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let (out, err) = (profile.path().join("dom.html"), profile.path().join("stderr.txt"));
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        // Its own process group, so that a hung browser goes with all its helper processes.
        .process_group(0)
        .spawn()
        .expect("chromium runs (bash .ci/services.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status();
            let _ = child.wait();
            panic!("chromium did not finish in 60 s: {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "chromium: {status}\n{}", std::fs::read_to_string(&err).unwrap_or_default());
    std::fs::read_to_string(&out).unwrap()
}

async fn browse(url: String) -> String {
    tokio::task::spawn_blocking(move || dump_dom(&url)).await.unwrap()
}

/// A page that submits a sign-in form like the product page's, as a user would.
fn sign_in(page: &str, user: &str) -> String {
    let login = page.replace("/productpage", "/login");
    format!(
        "data:text/html,<form method=post action=\"{login}\"><input name=username value={user}></form>\
         <script>document.forms[0].submit()</script>"
    )
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    Some(&text[from..from + text[from..].find(end)?])
}

/// A review as the DOM shows it: who, what, and the stars (colour, full, empty).
#[derive(Debug, PartialEq)]
struct Review {
    reviewer: String,
    text: String,
    stars: Option<(String, usize, usize)>,
}

fn reviews(dom: &str) -> Vec<Review> {
    dom.split("<blockquote class=\"review\">")
        .skip(1)
        .map(|block| {
            let block = &block[..block.find("</blockquote>").expect("closed review")];
            let stars = between(block, "<p class=\"rating\" style=\"color: ", "</p>").map(|rating| {
                let (color, rest) = rating.split_once('"').expect("style");
                let shown = &rest[rest.find('>').expect("rating text") + 1..];
                (color.to_string(), shown.matches('\u{2605}').count(), shown.matches('\u{2606}').count())
            });
            Review {
                reviewer: between(block, "<footer class=\"reviewer\">", "</footer>").unwrap_or_default().to_string(),
                text: between(block, "<p class=\"text\">", "</p>").unwrap_or_default().to_string(),
                stars,
            }
        })
        .collect()
}

fn served_by(dom: &str) -> &str {
    between(dom, "<span id=\"served-by\">", "</span>").unwrap_or_else(|| panic!("no served-by in {dom}"))
}

fn signed_in(dom: &str) -> Option<&str> {
    between(dom, "<b id=\"user\">", "</b>")
}

fn assert_stars(dom: &str, color: &str) {
    let got: Vec<_> = reviews(dom).into_iter().map(|r| (r.reviewer, r.stars)).collect();
    assert_eq!(
        got,
        [
            ("Reviewer1".to_string(), Some((color.to_string(), 5, 0))),
            ("Reviewer2".to_string(), Some((color.to_string(), 4, 1)))
        ],
        "{dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_page_in_a_browser() {
    // Without Istio's Denials task, so that reviews v3 reaches ratings and shows its stars.
    let options = Options { deny_reviews_v3: false, ..Options::default() };
    let topo = Topology::start(&mixr_e2e::binary("mixr"), &mixr_e2e::binary("mixr-proxy"), options).await.unwrap();
    let page = topo.productpage();

    // Anyone: reviews v1, no stars, and a sign-in form.
    let dom = browse(page.clone()).await;
    assert_eq!(between(&dom, "<h1 id=\"product\">", "</h1>"), Some("The Comedy of Errors"), "{dom}");
    assert!(dom.contains("<dt>Author:</dt><dd>William Shakespeare</dd>"), "{dom}");
    assert!(dom.contains("<dt>Pages:</dt><dd>200</dd>"), "{dom}");
    assert_eq!(served_by(&dom), "reviews-v1");
    let shown = reviews(&dom);
    assert_eq!(shown.len(), 2, "{dom}");
    assert_eq!(shown[0].reviewer, "Reviewer1");
    assert!(shown[0].text.starts_with("An extremely entertaining play by Shakespeare."), "{shown:?}");
    assert_eq!(shown[1].reviewer, "Reviewer2");
    assert!(shown.iter().all(|r| r.stars.is_none()), "{shown:?}");
    assert_eq!(signed_in(&dom), None);
    assert!(dom.contains("<form id=\"login\" method=\"post\" action=\"/login\"><input name=\"username\""), "{dom}");

    // jason signs in (the form posts, the page redirects back with his cookie): his calls
    // carry end-user: jason, routed to reviews v2, black stars.
    let dom = browse(sign_in(&page, "jason")).await;
    assert_eq!(signed_in(&dom), Some("jason"), "{dom}");
    assert_eq!(served_by(&dom), "reviews-v2");
    assert_stars(&dom, "black");

    // Traffic shifting done: everyone else on v3, red stars; jason keeps v2.
    topo.apply(Scenario::V3).await.unwrap();
    let dom = browse(page.clone()).await;
    assert_eq!(served_by(&dom), "reviews-v3", "{dom}");
    assert_stars(&dom, "red");
    let dom = browse(sign_in(&page, "jason")).await;
    assert_eq!(served_by(&dom), "reviews-v2", "{dom}");
    assert_stars(&dom, "black");

    // API clients still get JSON from the same URL; browsers' Accept gets HTML.
    let client = reqwest::Client::new();
    let json = client.get(&page).header("accept", "application/json").send().await.unwrap();
    assert_eq!(json.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&json.text().await.unwrap()).unwrap();
    assert_eq!(body["reviews"]["podname"], "reviews-v3", "{body}");
    let html = client.get(&page).header("accept", "text/html,*/*;q=0.8").send().await.unwrap();
    assert!(html.headers()["content-type"].to_str().unwrap().starts_with("text/html"));

    // A name that could break the page or a header is refused at sign-in.
    let login = page.replace("/productpage", "/login");
    let refused = client.post(&login).body("username=%3Cb%3E").send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 400);
}
