//! The lab's HTML page as a reader sees it: `tern lab --scenario switchover
//! --report-html` run as a user runs it, the page rendered by a headless
//! Chromium (Debian's `chromium`; `.ci/run` installs it), and its DOM
//! checked against what the terminal printed: the verdict line, the writes,
//! the switchover's plan step by step, every target and the DNS path, and
//! the switchover drawn when the terminal printed it.

use std::process::Command;

/// The part of `dom` from `<section id="ID"` to its end.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("the page has no {id} section:\n{dom}"));
    let end = dom[start..]
        .find("</section>")
        .map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// Text as the browser serialises it.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn the_switchover_page_shows_the_writes_the_plan_the_targets_and_the_dns_path() {
    assert!(
        Command::new("chromium").arg("--version").output().is_ok(),
        "this test runs Debian's chromium; install it with `apt-get install -y chromium`"
    );
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("r.html");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["lab", "--scenario", "switchover", "--report-html"])
        .arg(&page)
        .output()
        .expect("run tern lab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let output = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tern lab failed:\n{output}");

    let profile = tempfile::tempdir().unwrap();
    let shown = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium (apt-get install -y chromium)");
    let dom = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        dom.contains("<h1>tern lab: switchover</h1>"),
        "chromium rendered no page: {dom}\n{}",
        String::from_utf8_lossy(&shown.stderr)
    );

    // The verdict: the terminal's last line.
    let verdict = stdout.lines().last().unwrap();
    assert!(verdict.starts_with("switchover: "), "{output}");
    assert!(
        dom.contains(&format!(">{}</p>", html(verdict))) && dom.contains("id=\"verdict\""),
        "the verdict {verdict:?} is not on the page:\n{dom}"
    );

    // The writes: the terminal's counts, the unavailable window, the lost writes.
    let writes = section(&dom, "writes");
    let counts = stdout
        .lines()
        .find_map(|l| l.strip_prefix("writes              "))
        .and_then(|l| l.split(" (").next())
        .unwrap_or_else(|| panic!("no writes line:\n{output}"));
    assert!(writes.contains(counts), "{counts:?} not in {writes}");
    assert!(writes.contains("<svg"), "no write timeline: {writes}");
    assert!(writes.contains("id=\"write-unavailable\""), "{writes}");
    assert!(writes.contains("id=\"lost-writes\""), "{writes}");

    // The plan, step by step, as the terminal lists it.
    let database = section(&dom, "database");
    let plan = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("plan 1 us-east -> us-west"))
        .unwrap_or_else(|| panic!("no switchover plan:\n{output}"));
    let (_, steps) = plan.split_once(": ").unwrap();
    for step in steps.split(", ") {
        let name = step.rsplitn(3, ' ').nth(2).unwrap();
        assert!(
            database.contains(&format!("<td class=\"step-name\">{name}</td>")),
            "plan step {name:?} not on the page: {database}"
        );
    }

    // Every target the terminal printed, met or missed alike.
    let targets = section(&dom, "targets");
    let printed: Vec<(&str, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("target: ")?.rsplit_once(": "))
        .collect();
    assert!(!printed.is_empty(), "{output}");
    for (name, mark) in &printed {
        let class = if *mark == "met" { "met" } else { "missed" };
        assert!(
            targets.contains(&format!(
                "<td>{}</td><td class=\"{class}\">{mark}</td>",
                html(name)
            )),
            "target {name}: {mark} not on the page: {targets}"
        );
    }
    assert_eq!(
        targets.matches("<tr class=\"target ").count(),
        printed.len(),
        "{targets}"
    );

    // The DNS path, informational as in the terminal.
    let dns = section(&dom, "dns");
    assert!(dns.contains("informational, not a target"), "{dns}");
    assert!(dns.contains("dns, honours TTL"), "{dns}");

    // The switchover at the terminal's moment (one rounding step apart at
    // most: the terminal's stamp and the report's fault are taken a moment
    // apart).
    let label = "switchover: the database's writer moves to us-west (planned)";
    let terminal: f64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_suffix(label)?
                .trim()
                .strip_prefix('[')?
                .strip_suffix("s]")
        })
        .unwrap_or_else(|| panic!("no switchover line:\n{output}"))
        .trim()
        .parse()
        .unwrap();
    let events = section(&dom, "events");
    let on_page: f64 = events
        .split("<li>")
        .find_map(|li| {
            li.split_once(" s: ")
                .filter(|(_, rest)| rest.starts_with(label))
        })
        .unwrap_or_else(|| panic!("no switchover event: {events}"))
        .0
        .parse()
        .unwrap();
    assert!(
        (on_page - terminal).abs() < 0.11,
        "the page draws the switchover at {on_page} s, the terminal printed it at {terminal} s"
    );
}
